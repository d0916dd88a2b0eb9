"""aarch64 architecture facts (Arm ARM): PSTATE values and system-register encodings (regs.py).
The arm64 KVM API that uses them is harness.kvm.arch.aarch64."""
