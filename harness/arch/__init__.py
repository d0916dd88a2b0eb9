"""Architecture facts, one package an architecture (x86_64, aarch64): what the CPU architecture
defines, whatever runs the guest. The KVM API per architecture is harness.kvm (x86-64) and
harness.kvm.arch.aarch64.

Pure constants and table code, no KVM and no cffi: the run loop, the rescuer, the entry-state
builder, the instruction decoder and the matrix validator all read the same definitions.
"""
