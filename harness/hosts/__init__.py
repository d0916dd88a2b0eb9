"""Hosts: where a cell's backend runs, an axis of the matrix (`native`, `lab`, `auto`).

- native: this machine's /dev/kvm, whatever it is (kvm_intel, kvm_amd, kvm_pvm);
- lab: a Linux VM under QEMU TCG with emulated SVM, in which a real kvm_amd runs; only the VMM
  child runs there (harness.hosts.lab, harness.hosts.agent), everything else stays here;
- auto: native where /dev/kvm is hardware-backed, lab otherwise (harness.hosts.select).
Kept import-light: the runner imports this package to expand the matrix.
"""
