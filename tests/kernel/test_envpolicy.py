"""The env policy: what a run may set for a step, and what a child process starts from."""

import shutil

import pytest
from foundry.kernel.core.envpolicy import (
    SAFE_PATH,
    child_environment,
    env_violation,
    forbidden_reason,
)


@pytest.mark.parametrize(
    "name",
    ["PATH", "path", "LD_PRELOAD", "LD_LIBRARY_PATH", "BASH_ENV", "BASH_FUNC_echo%%", "ENV",
     "IFS", "PYTHONPATH", "PYTHONSTARTUP", "PERL5OPT", "NODE_OPTIONS", "FOUNDRY_PAYLOAD",
     "GLIBC_TUNABLES", "1X", "A-B", "", "A" * 200,
     # a program run for a password, and where a child's traffic goes (found by a review)
     "SSH_ASKPASS", "GIT_ASKPASS", "sudo_askpass", "https_proxy", "HTTP_PROXY", "ALL_PROXY",
     "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSLKEYLOGFILE",
     # options and start-up files that name a program to run (found by a hostile-input hunt:
     # GIT_EXTERNAL_DIFF and TAR_OPTIONS ran commands under allow_env = ["*"])
     "GIT_EXTERNAL_DIFF", "GIT_PROXY_COMMAND", "git_config_count", "TAR_OPTIONS", "MAKEFLAGS",
     "SYSTEMD_PAGER", "SUDO_EDITOR", "npm_config_script_shell", "PIP_INDEX_URL", "GOFLAGS",
     "CC", "ZDOTDIR", "OPENSSL_ENGINES", "DOCKER_HOST", "KUBECONFIG", "WGETRC",
     "RUSTC_WRAPPER", "SVN_SSH", "RSYNC_RSH", "HGEDITOR", "CMAKE_C_COMPILER_LAUNCHER",
     "DOTNET_STARTUP_HOOKS", "CORECLR_PROFILER_PATH", "PSQLRC", "MAVEN_OPTS",
     # make's programs and a compiler's flags, zip's options (found by an egress hunt: a
     # recipe's $(RM), gcc -wrapper from CFLAGS and zip -TT from ZIPOPT ran the run's command)
     "RM", "AS", "CFLAGS", "CPPFLAGS", "LDFLAGS", "GCC_EXEC_PREFIX", "ZIPOPT", "MANOPT",
     "LESS", "RSYNC_CONNECT_PROG", "PHPRC",
     # the rest of make's built-in rules' variables, a build's other tools and flags (found by
     # a plugin-security hunt: TARGET_ARCH and LOADLIBES ran "; touch …" through a .c rule)
     "TARGET_ARCH", "LOADLIBES", "OUTPUT_OPTION", "YFLAGS", "CONFIG_SITE", "CONFIG_SHELL",
     "RUSTFLAGS", "CGO_LDFLAGS", "GOPROXY", "PKG_CONFIG", "STRIP", "CCACHE_PREFIX", "CCACHE_DIR"],
)  # fmt: skip
def test_names_that_change_how_programs_run_are_forbidden(name):
    assert forbidden_reason(name)
    assert env_violation({name: "x"}, {"*"}) is not None


def _make_recipe_variables() -> set[str]:
    """The variables GNU make's built-in rules and variables reference (``$(NAME)``)."""
    import re
    import subprocess

    database = subprocess.run(["make", "-p", "-f", "/dev/null"], capture_output=True,
                              text=True, check=False).stdout  # fmt: skip
    return set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", database))


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_every_variable_of_makes_built_in_rules_is_forbidden():
    """make imports the environment as variables, and its built-in rules put them into a
    recipe's command line: a run that sets any of them runs a command of its own through a
    declared block that runs make."""
    names = _make_recipe_variables()
    assert {"CC", "TARGET_ARCH", "LOADLIBES"} <= names  # the database was read
    allowed = sorted(n for n in names if not forbidden_reason(n))
    assert allowed == []


@pytest.mark.parametrize("name", ["CGO_ENABLED", "CCACHE_DISABLE", "GIT_AUTHOR_NAME"])
def test_harmless_names_of_forbidden_families_stay_allowed(name):
    """Builds commonly set these (CGO_ENABLED=0 for a static go build): the families' prefixes
    (``CGO_``, ``CCACHE_``, ``GIT_``) do not take them (found by a review)."""
    assert forbidden_reason(name) == ""
    assert env_violation({name: "0"}, {"*"}) is None


def test_a_name_must_be_allowed_by_the_block():
    assert env_violation({"TONE": "loud"}, {"TONE"}) is None
    assert env_violation({"TONE": "loud"}, {"*"}) is None
    name, reason = env_violation({"TONE": "loud"}, set())  # type: ignore[misc]
    assert name == "TONE"
    assert "allow_env: none" in reason


def test_values_must_be_bounded_strings_without_nul():
    assert env_violation({"A": 1}, {"A"}) == ("A", "expected a string value")
    assert env_violation({"A": "x\x00y"}, {"A"}) is not None
    assert env_violation({"A": "x" * 40_000}, {"A"}) is not None


def test_values_and_the_whole_env_are_bounded_in_bytes():
    """Counted in characters, 32,768 four-byte ones (128 KiB: past Linux's limit for one
    string) passed, and so did 80 values of 32,000 (2.5 MB): every attempt failed, E2BIG."""
    assert env_violation({"A": "x" * 32_768}, {"*"}) is None
    assert env_violation({"A": "\U0001f600" * 8_192}, {"*"}) is None  # 32 KiB of UTF-8
    name, reason = env_violation({"A": "\U0001f600" * 8_193}, {"*"})  # type: ignore[misc]
    assert name == "A"
    assert "at most 32,768 bytes of UTF-8" in reason
    many = {f"V{i:02d}": "x" * 32_000 for i in range(80)}
    name, reason = env_violation(many, {"*"})  # type: ignore[misc]
    assert name == "V08"  # 9 × ~32 KB pass 256 KiB
    assert "passes 262,144 bytes in all" in reason


def test_a_child_starts_from_a_minimal_environment():
    daemon = {"PATH": "/evil", "HOME": "/home/d", "OPENAI_API_KEY": "sk", "AWS_SECRET": "s",
              "TZ": "UTC", "PASSED": "p"}  # fmt: skip
    env = child_environment(
        daemon, passed=["PASSED"], from_run={"TONE": "x", "PATH": "/run"}, declared={"D": "1"}
    )
    assert env == {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": "/home/d", "TZ": "UTC",
                   "PASSED": "p", "TONE": "x", "D": "1"}  # fmt: skip


def test_the_operator_may_declare_path():
    assert child_environment({}, declared={"PATH": "/opt/bin"})["PATH"] == "/opt/bin"


@pytest.mark.parametrize(
    "name",
    ["GIT_AUTHOR_NAME", "GIT_COMMITTER_EMAIL", "GIT_TERMINAL_PROMPT", "CARGO_TERM_COLOR",
     "PIP_NO_CACHE_DIR", "DOCKER_BUILDKIT", "TONE"],
)  # fmt: skip
def test_harmless_names_of_forbidden_families_may_be_set(name):
    """Who a commit is by, whether git may prompt, colour: builds set these, and none names a
    program to run (found by review of the families forbidden whole)."""
    assert forbidden_reason(name) == ""
    assert env_violation({name: "x"}, {"*"}) is None
