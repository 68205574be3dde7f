# mt_bench stage: see the owner notes in docs/architecture.md
