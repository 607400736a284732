"""Which environment variables a run may set for a step, and what a child process starts from.

A run is untrusted: its steps' ``env`` may set only names the block's operator allowed
(``allow_env``), and never a name that changes how a program is found, loaded or interpreted
(``PATH``, ``LD_*``, ``BASH_FUNC_*``, ``PYTHON*`` …), whatever the configuration says. A child
process starts from :func:`child_environment`: a small documented base, never the daemon's
whole environment, so daemon secrets reach a child only when the operator passes them.
Pure functions, standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
BASE_NAMES = ("HOME", "LANG", "LC_ALL", "TZ")
MAX_ENV_VALUE = 32 * 1024  # UTF-8 bytes of a value (Linux refuses one string past 128 KiB)
MAX_ENV_BYTES = 256 * 1024  # of a step's whole env, "NAME=value\0" each (execve: ~2 MB in all)
TRACEPARENT = "TRACEPARENT"  # set by the daemon (the execution's span), never by a run

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Names that decide which program runs, what it loads, or code it evaluates at start.
_FORBIDDEN_NAMES = frozenset(
    {
        "PATH", "IFS", "ENV", "BASH_ENV", "SHELL", "SHELLOPTS", "BASHOPTS", "PS4", "CDPATH",
        "GLOBIGNORE", "PROMPT_COMMAND", "HOME", "TMPDIR", "GCONV_PATH", "LOCPATH", "NLSPATH",
        "HOSTALIASES", "RES_OPTIONS", "LOCALDOMAIN", "GLIBC_TUNABLES", "PERLLIB", "PERL5LIB",
        "PERL5OPT", "RUBYLIB", "RUBYOPT", "NODE_OPTIONS", "NODE_PATH", "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH", "EDITOR", "VISUAL", "PAGER", "GIT_SSH",
        "GIT_SSH_COMMAND", "GIT_EXEC_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "OPENSSL_CONF",
        "LESSOPEN", "LESSCLOSE", "TERMINFO", "XDG_CONFIG_HOME",
        # where a child's connections go and whom it trusts there (a proxy sees all of it)
        "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "FTP_PROXY", "NO_PROXY", "CURL_CA_BUNDLE",
        "REQUESTS_CA_BUNDLE", "SSLKEYLOGFILE",
        # options or start-up files a common tool reads, which name a program to run
        # (tar --checkpoint-action=exec, make's flags, curl's and wget's config, zsh's rc files,
        # an editor's init commands, go's -toolexec, a build's compiler)
        "TAR_OPTIONS", "MAKEFLAGS", "MFLAGS", "GNUMAKEFLAGS", "CURL_HOME", "WGETRC", "ZDOTDIR",
        "TERMINFO_DIRS", "INPUTRC", "BROWSER", "FCEDIT", "MANPAGER", "LESSKEY", "LESSKEYIN",
        "VIMINIT", "EXINIT", "MYVIMRC", "EMACSLOADPATH", "GOFLAGS", "GOROOT", "GOTOOLCHAIN",
        "CC", "CXX", "CPP", "LD", "AR", "KUBECONFIG", "AWS_CONFIG_FILE", "BOTO_CONFIG",
        "GNUPGHOME", "SSH_AUTH_SOCK", "HISTFILE", "RUSTC", "RUSTDOC", "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER", "SVN_SSH", "RSYNC_RSH", "CVS_RSH", "HGRCPATH", "HGEDITOR",
        "PSQLRC", "MAVEN_OPTS", "GRADLE_OPTS", "JAVA_OPTS", "SBT_OPTS", "ANT_OPTS",
        # make's program variables (a recipe's $(RM) ran the run's command), a compiler's
        # flags and search paths (gcc -wrapper, -fplugin, -specs; a header put first), and
        # more options that name a program (zip -TT, man -P, less's +!, rsync's connect program)
        "AS", "RM", "FC", "M2C", "PC", "CO", "GET", "LEX", "YACC", "LINT", "MAKEINFO", "TEX",
        "TEXI2DVI", "WEAVE", "CWEAVE", "TANGLE", "CTANGLE", "MAKE", "MAKEFILES", "OBJC",
        "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS", "LDLIBS", "ASFLAGS", "FFLAGS", "OBJCFLAGS",
        "ARFLAGS",
        "COMPILER_PATH", "GCC_EXEC_PREFIX", "CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH",
        "OBJC_INCLUDE_PATH", "LIBRARY_PATH", "ZIPOPT", "ZIP", "MANOPT", "LESS",
        "RSYNC_CONNECT_PROG", "PHPRC", "PHP_INI_SCAN_DIR", "GEM_HOME", "GEM_PATH",
        "BUNDLE_GEMFILE", "R_PROFILE", "R_PROFILE_USER", "R_ENVIRON", "R_ENVIRON_USER",
        "AWS_SHARED_CREDENTIALS_FILE",
        # every other variable GNU make's built-in rules put into a recipe's command line
        # ($(TARGET_ARCH) ran "; touch …" through a .c file's implicit rule), and make's own
        "TARGET_ARCH", "TARGET_MACH", "LOADLIBES", "OUTPUT_OPTION", "SCCS_OUTPUT_OPTION",
        "YFLAGS", "LFLAGS", "PFLAGS", "RFLAGS", "COFLAGS", "GFLAGS", "LINTFLAGS", "M2FLAGS",
        "MODFLAGS", "DEFFLAGS", "MAKEINFO_FLAGS", "TEXI2DVI_FLAGS", "MAKE_COMMAND",
        "MAKEOVERRIDES", "MAKESHELL",
        # autoconf's site script and shell, other tools of a build (binutils, pkg-config's
        # flags, setuptools' linker), a compiler launcher's program, rustc's and cgo's flags
        # (-C linker=…, -fplugin), and where go fetches code and tools from
        "CONFIG_SITE", "CONFIG_SHELL", "NM", "STRIP", "RANLIB", "OBJCOPY", "OBJDUMP", "READELF",
        "ADDR2LINE", "ELFEDIT", "PKG_CONFIG", "PKG_CONFIG_PATH", "PKG_CONFIG_LIBDIR",
        "PKG_CONFIG_SYSROOT_DIR", "LDSHARED", "LDCXXSHARED", "LIBS", "RUSTFLAGS",
        "RUSTDOCFLAGS", "GOENV", "GOPATH", "GOBIN", "GOPROXY", "GOSUMDB", "GONOSUMDB",
        "GONOSUMCHECK", "GONOPROXY", "GOPRIVATE", "GOINSECURE", "GOEXPERIMENT", "GOCACHEPROG",
    }
)  # fmt: skip
# Harmless names in the families forbidden below, that builds and scripts commonly set: who a
# commit is by, whether git may prompt, colour, pip's cache, whether go builds with cgo (a
# static build), whether ccache caches (not where: a folder of cached objects it would link).
_HARMLESS_NAMES = frozenset(
    {
        "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_AUTHOR_DATE", "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL", "GIT_COMMITTER_DATE", "GIT_TERMINAL_PROMPT", "CARGO_TERM_COLOR",
        "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_NO_INPUT", "DOCKER_BUILDKIT",
        "CGO_ENABLED", "CCACHE_DISABLE",
    }
)  # fmt: skip
# A program another runs for a password (SSH_ASKPASS, GIT_ASKPASS, SUDO_ASKPASS …), to page or
# to edit (GIT_PAGER, SYSTEMD_PAGER, SUDO_EDITOR …)
_FORBIDDEN_SUFFIXES = ("_ASKPASS", "_PAGER", "_EDITOR")
_FORBIDDEN_PREFIXES = (
    "LD_", "BASH_", "BASH_FUNC_", "PYTHON", "DYLD_", "MALLOC_", "PERL", "RUBY", "NODE_",
    "LUA_", "TCL", "FOUNDRY_", "TRACEPARENT",
    # git runs programs named in dozens of its variables (GIT_EXTERNAL_DIFF, GIT_PROXY_COMMAND,
    # GIT_CONFIG_* …); npm, pip, cargo and docker read config that runs or fetches code
    "GIT_", "OPENSSL_", "NPM_CONFIG_", "PIP_", "CARGO_", "DOCKER_",
    # a build's compiler launcher, .NET's start-up hooks and profiler
    "CMAKE_", "DOTNET_", "CORECLR_", "COR_",
    # ccache's and distcc's (CCACHE_PREFIX runs a program), cgo's compiler and flags
    "CCACHE_", "DISTCC_", "CGO_",
)  # fmt: skip


def forbidden_reason(name: str) -> str:
    """Why a run may never set ``name`` ("" when it may, given the operator allows it)."""
    if not _NAME.fullmatch(name):
        return "not a valid variable name (letters, digits and _, not starting with a digit)"
    upper = name.upper()
    if upper in _HARMLESS_NAMES:
        return ""
    if (
        upper in _FORBIDDEN_NAMES
        or upper.startswith(_FORBIDDEN_PREFIXES)
        or upper.endswith(_FORBIDDEN_SUFFIXES)
    ):
        return "changes how programs are found, loaded or run, so a run may never set it"
    return ""


def env_violation(env: Mapping[str, object], allowed: Collection[str]) -> tuple[str, str] | None:
    """The first ``(name, reason)`` a run's step ``env`` may not set, or None.

    ``allowed`` is the block's ``allow_env``; ``"*"`` in it allows every name that is not
    forbidden outright.
    """
    total = 0
    for name, value in env.items():
        reason = forbidden_reason(name) or _value_reason(value)
        if not reason and name not in allowed and "*" not in allowed:
            shown = ", ".join(sorted(allowed)) or "none"
            reason = f"not allowed for this block (its allow_env: {shown})"
        if not reason:
            total += len(name) + _utf8_size(str(value)) + 2
            if total > MAX_ENV_BYTES:  # no program could start with it: every attempt failed
                reason = f"the step's env passes {MAX_ENV_BYTES:,} bytes in all here"
        if reason:
            return name, reason
    return None


def _value_reason(value: object) -> str:
    if not isinstance(value, str):
        return "expected a string value"
    if "\x00" in value or _utf8_size(value) > MAX_ENV_VALUE:
        return f"value must be at most {MAX_ENV_VALUE:,} bytes of UTF-8, without NUL"
    return ""


def _utf8_size(value: str) -> int:
    return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))


def child_environment(
    daemon_env: Mapping[str, str],
    *,
    passed: Collection[str] = (),
    declared: Mapping[str, str] | None = None,
    from_run: Mapping[str, str] | None = None,
    traceparent: str = "",
) -> dict[str, str]:
    """A child process's environment, lowest precedence first: the base (``PATH`` = a safe
    default, ``HOME``/``LANG``/``LC_ALL``/``TZ`` from the daemon), the daemon variables the
    operator passes by name, what a run set (forbidden names dropped again here: defence in
    depth), and what the operator or block code declares. Last, the daemon's own: ``TRACEPARENT``
    is the span of the execution that starts the child (W3C trace context), never a stale value
    passed or declared — and absent outside a trace, so a child cannot mistake another's."""
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}
    env.update({name: daemon_env[name] for name in BASE_NAMES if name in daemon_env})
    env.update({name: daemon_env[name] for name in passed if name in daemon_env})
    for name, value in (from_run or {}).items():
        if not forbidden_reason(name):
            env[name] = value
    env.update(declared or {})
    env.pop(TRACEPARENT, None)
    if traceparent:
        env[TRACEPARENT] = traceparent
    return env
