"""Architecture facts, one package an architecture (x86_64 now, aarch64 beside it later).

Pure constants and table code, no KVM and no cffi: the run loop, the rescuer, the entry-state
builder, the instruction decoder and the matrix validator all read the same definitions.
"""
