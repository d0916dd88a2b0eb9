"""The built-in hypervisor on an arm64 host: KVM_ARM_VCPU_INIT with PSCI 0.2, the in-kernel
vGICv3 (KVM_CREATE_DEVICE) and architected timer, MMIO exits to the PL011/PL031 bus, PSCI
SYSTEM_OFF/SYSTEM_RESET as KVM_EXIT_SYSTEM_EVENT, CPU_ON observed as a secondary leaving
POWER_OFF. Nothing here runs on an x86 host; tests check the ABI against the arm64 headers."""
