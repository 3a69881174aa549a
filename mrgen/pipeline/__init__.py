"""The end-to-end chain (demo and downstream benchmark): stages that talk through files, resumable."""
