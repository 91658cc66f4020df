// Package rawread reads a non-blocking file descriptor through the Go
// runtime's poller with a raw read(2): a reader that has data waiting takes
// it without the scheduler's system-call bookkeeping (entersyscall, P
// hand-off), and one with nothing waiting parks in the poller. The TAPs of
// the frame path and the NFLOG socket of the end log read so.
package rawread

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reader reads one file descriptor. Its read function is bound once
// (Init), so a Read allocates nothing. One Read at a time.
type Reader struct {
	rc    syscall.RawConn
	b     []byte
	n     int
	errno unix.Errno
	fn    func(fd uintptr) bool
}

// Init binds r to rc. r must not move afterwards (keep it in a struct
// allocated once).
func (r *Reader) Init(rc syscall.RawConn) {
	r.rc = rc
	r.fn = r.read
}

// Read reads once into b, waiting in the poller until the descriptor is
// readable: n and the read's errno (0 on success; never EAGAIN or EINTR),
// or err from the poller (the descriptor was closed).
func (r *Reader) Read(b []byte) (n int, errno unix.Errno, err error) {
	r.b = b
	err = r.rc.Read(r.fn)
	n, errno = r.n, r.errno
	r.b = nil
	return n, errno, err
}

func (r *Reader) read(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&r.b[0])), uintptr(len(r.b)))
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // nothing waiting: park in the poller
		}
		r.n, r.errno = int(n), e
		return true
	}
}
