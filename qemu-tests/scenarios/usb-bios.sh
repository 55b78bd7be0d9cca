# shellcheck shell=bash
# The same stick under legacy BIOS (SeaBIOS: syslinux's gptmbr.bin and the
# ESP's legacy-bootable flag), restoring onto a SATA disk (AHCI).
# shellcheck source=qemu-tests/lib.sh
. "$TOP/qemu-tests/lib.sh"

isolated rq-usb-bios

blank_disk "$WORK/sata.img" 160
guest usb-bios 300 -machine q35 \
  -drive "file=$MEDIA/reimage-usb.img,if=none,id=stick,format=raw,snapshot=on" \
  -device qemu-xhci -device usb-storage,drive=stick,bootindex=1 \
  -drive "file=$WORK/sata.img,if=none,id=target,format=raw" -device ide-hd,drive=target,bus=ide.0
expect_log usb-bios "SYSLINUX"
expect_log usb-bios "reimage.target=auto chose sda"
expect_log usb-bios "Restored /dev/sda"
expect_log usb-bios "reboot: Power down"
check_restored "$WORK/sata.img"
