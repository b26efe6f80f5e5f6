"""Writing: source splits into LMDB shards, in parallel, resumable after a kill, with an honest report. Its
modules are mapped in docs/DESIGN.md. Torch-free, so ``imagenet-pack convert`` starts in a fraction of a
second. Nothing is imported here: import from the modules (or the package root)."""
