"""x86_64 architecture facts: control-register and flag bits, MSR indices (regs.py), CPUID
features and CPU profiles (cpuid.py)."""
