package main

// Pseudo-terminals without libc: /dev/ptmx and ioctls through syscall (what os.openpty does in
// emulator/agent/pty_session.py), and the start of a program on the terminal as its controlling tty.

import (
	"os"
	"strconv"
	"syscall"
	"unsafe"
)

const ioTIOCGPTPEER = 0x5441 // open the peer (slave) of a master: no /dev/pts path needed (Linux >= 4.13)

func ioIoctl(fd, req, arg uintptr) error {
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, req, arg); e != 0 {
		return e
	}
	return nil
}

// ioOpenPty allocates a terminal: -> (master, non-blocking and handled by Go's poller, so that a read
// waits without a thread; slave descriptor, blocking, for the child).
func ioOpenPty() (*os.File, int, error) {
	mfd, err := syscall.Open("/dev/ptmx", syscall.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, -1, err
	}
	unlock := int32(0)
	if err := ioIoctl(uintptr(mfd), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); err != nil {
		syscall.Close(mfd)
		return nil, -1, err
	}
	sfd, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(mfd), ioTIOCGPTPEER,
		uintptr(syscall.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC))
	if e != 0 {
		var n uint32
		if err := ioIoctl(uintptr(mfd), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); err != nil {
			syscall.Close(mfd)
			return nil, -1, err
		}
		fd, err := syscall.Open("/dev/pts/"+strconv.Itoa(int(n)), syscall.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
		if err != nil {
			syscall.Close(mfd)
			return nil, -1, err
		}
		sfd = uintptr(fd)
	}
	if err := syscall.SetNonblock(mfd, true); err != nil {
		syscall.Close(mfd)
		syscall.Close(int(sfd))
		return nil, -1, err
	}
	return os.NewFile(uintptr(mfd), "/dev/ptmx"), int(sfd), nil
}

// ioSetWinsize sets the terminal size (struct winsize: rows, cols, 0, 0); on a master the kernel sends
// SIGWINCH to the terminal's foreground group.
func ioSetWinsize(fd uintptr, rows, cols int) error {
	ws := [4]uint16{uint16(rows), uint16(cols), 0, 0}
	return ioIoctl(fd, syscall.TIOCSWINSZ, uintptr(unsafe.Pointer(&ws)))
}

// ioWinsizeOn sets the size through the poller's descriptor of a master without making it blocking
// (os.File.Fd would).
func ioWinsizeOn(master *os.File, rows, cols int) {
	if rc, err := master.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _ = ioSetWinsize(fd, rows, cols) })
	}
}
