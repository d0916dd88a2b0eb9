"""Guest assets: what a guest file's kernel/initrd/disk/firmware sources turn into on disk.

- cache.AssetCache: content-addressed store (blobs by sha256, name -> hash index with provenance)
- recipes.build_asset(name): reproducible builds from Debian packages (kernels, busybox initramfs,
  the debootstrap'd systemd disk, Xen)
- sources.resolve(source, guest=...): {path} | {fixture} | {asset} | {url} -> ResolvedAsset;
  sources.fetch(guest) / sources.import_file(guest, file) for downloads with published checksums
"""
