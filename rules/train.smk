# train stage: see the owner notes in docs/architecture.md
