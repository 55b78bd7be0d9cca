# shellcheck shell=bash
# The USB stick under UEFI (OVMF; usb-storage on xHCI): the stick image is
# written onto a bigger "stick" (a loop device) with image-build/write-stick,
# which grows the data partition; then the unattended restore of
# stick:testos.rimg onto the only internal disk, an NVMe one; the host
# checks the disk, then boots it and sees the test OS come up.
# shellcheck source=qemu-tests/lib.sh
. "$TOP/qemu-tests/lib.sh"

isolated rq-usb-uefi

blank_disk "$WORK/stick.img" 512
loop=$(losetup --find --show --partscan "$WORK/stick.img")
on_exit "losetup -d $loop"
"$TOP/image-build/write-stick" --yes "$MEDIA/reimage-usb.img" "$loop"
data_mib=$(($(blockdev --getsize64 "${loop}p2") >> 20))
say "the data partition now holds $data_mib MiB"
((data_mib > 350)) || fail "write-stick did not grow the data partition ($data_mib MiB)"
e2fsck -fn "${loop}p2" >/dev/null || fail "the grown data partition is not clean"
if "$TOP/image-build/write-stick" --yes "$MEDIA/reimage-usb.img" "${loop}p1" 2>"$WORK/refused"; then
  fail "write-stick wrote onto a partition"
fi
grep -q "is a partition" "$WORK/refused" || fail "write-stick refused a partition without saying why: $(cat "$WORK/refused")"
losetup -d "$loop"

blank_disk "$WORK/nvme.img" 128
# shellcheck disable=SC2046
guest usb-uefi 300 $(uefi usb-uefi) \
  -drive "file=$WORK/stick.img,if=none,id=stick,format=raw" \
  -device qemu-xhci -device usb-storage,drive=stick,bootindex=1 \
  -drive "file=$WORK/nvme.img,if=none,id=target,format=raw" -device nvme,serial=target1,drive=target
expect_log usb-uefi "reimage.target=auto chose nvme0n1"
expect_log usb-uefi "Restored /dev/nvme0n1"
expect_log usb-uefi "verified"
expect_log usb-uefi "reboot: Power down"
check_restored "$WORK/nvme.img"
boot_restored restored "$WORK/nvme.img"
