# shellcheck shell=bash
# image-build is reproducible: building again from the same inputs (binary,
# images, command line, kernel package, commit time) gives the same bytes
# for the kernel, the initramfs, the stick and every file of the PXE tree.
# shellcheck source=qemu-tests/lib.sh
. "$TOP/qemu-tests/lib.sh"

"$TOP/image-build/build" --out "$WORK/again" --binary "$BIN" --images "$(dirname "$TESTOS_IMAGE")" \
  --cmdline "$MEDIA_CMDLINE"
if ! diff "$MEDIA/SHA256SUMS" "$WORK/again/SHA256SUMS"; then
  fail "a second build differs from the first"
fi
say "two builds are identical: $(wc -l <"$MEDIA/SHA256SUMS") files"
size=$(stat -c %s "$MEDIA/initrd.img")
say "initramfs: $((size / 1024)) KiB"
((size <= 15 << 20)) || fail "the initramfs is over 15 MiB"
