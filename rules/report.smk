# report stage: see the owner notes in docs/architecture.md
