# shellcheck shell=bash
# The USB stick under UEFI (OVMF; usb-storage on xHCI): the unattended
# restore of stick:testos.rimg onto the only internal disk, an NVMe one;
# the host checks the disk, then boots it and sees the test OS come up.
# shellcheck source=qemu-tests/lib.sh
. "$TOP/qemu-tests/lib.sh"

blank_disk "$WORK/nvme.img" 128
# shellcheck disable=SC2046
guest usb-uefi 300 $(uefi usb-uefi) \
  -drive "file=$MEDIA/reimage-usb.img,if=none,id=stick,format=raw,snapshot=on" \
  -device qemu-xhci -device usb-storage,drive=stick,bootindex=1 \
  -drive "file=$WORK/nvme.img,if=none,id=target,format=raw" -device nvme,serial=target1,drive=target
expect_log usb-uefi "reimage.target=auto chose nvme0n1"
expect_log usb-uefi "Restored /dev/nvme0n1"
expect_log usb-uefi "verified"
expect_log usb-uefi "reboot: Power down"
check_restored "$WORK/nvme.img"
boot_restored restored "$WORK/nvme.img"
