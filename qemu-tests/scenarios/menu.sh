# shellcheck shell=bash
# The menu over the serial console: the rescue system boots (kernel and
# initramfs given to QEMU directly) with no reimage.source, so the menu
# shows on ttyS0. The boot stick is plugged in (not booted): the menu lists
# its image, offers the NVMe disk and not the stick; the test picks both,
# types the disk's name, waits for the verified restore and powers off from
# the done screen. The host checks the disk. (busybox's poweroff from the
# shell is tested against the real PID 1 in tests/rescue.rs: typed into
# ash over this serial line, its Enter was sometimes lost.)
# shellcheck source=qemu-tests/lib.sh
. "$TOP/qemu-tests/lib.sh"

isolated rq-menu

blank_disk "$WORK/nvme.img" 128
export SERIAL_SOCKET=$WORK/serial.sock
guest_bg menu 400 -machine q35 \
  -kernel "$MEDIA/vmlinuz" -initrd "$MEDIA/initrd.img" -append "$GUEST_CMDLINE reimage.shell=0" \
  -drive "file=$MEDIA/reimage-usb.img,if=none,id=stick,format=raw,snapshot=on" \
  -device qemu-xhci -device usb-storage,drive=stick \
  -drive "file=$WORK/nvme.img,if=none,id=target,format=raw" -device nvme,serial=target1,drive=target
pid=$guest_pid
"$TOP/qemu-tests/serial-menu" "$SERIAL_SOCKET" \
  "wait:Step 1 of 3: choose an image:240" "wait:> testos:60" "wait:1 image:10" "send:\r" \
  "wait:Step 2 of 3: choose the disk to erase:30" "wait:nvme0n1:30" "send:\r" \
  "wait:Step 3 of 3: confirm erasing the disk:30" "send:nvme0n1\r" \
  "wait:The restore is complete.:240" "wait:Verified  yes:10" "send:{down}" "send:\r" \
  >"$WORK/screen.txt" || { cat "$WORK/screen.txt"; fail "the menu did not go as expected"; }
cat "$WORK/screen.txt"
wait_guest menu "$pid"
expect_log menu "reboot: Power down"
check_restored "$WORK/nvme.img"
