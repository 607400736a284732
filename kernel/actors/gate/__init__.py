"""The gate actor: eval packs and change gates (README.md, "Governance")."""
