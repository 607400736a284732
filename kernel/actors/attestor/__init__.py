"""The attestor actor: signed attestations (README.md, "Attestations")."""
