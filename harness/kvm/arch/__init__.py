"""Architecture-specific halves of the KVM core, one package an architecture (Firecracker's
arch/x86_64 + arch/aarch64 split). What is arch-neutral (system fd, gap sink, flight recorder,
stop reasons, the kick signal) stays in harness.kvm and is imported, not copied."""
