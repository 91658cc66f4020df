// Package inject sends frames into the kernel through AF_PACKET sockets
// bound to one interface: toward a PU on its host-side veth, and away from
// a PU through the node's injection port (netsetup.EnsureInjectionPort).
//
// Every socket has PACKET_VNET_HDR, so each write starts with a virtio-net
// header: GSO super-packets and partial checksums read from a TAP are sent
// on as they are. Sockets are bound with protocol 0 (they receive nothing)
// and also set PACKET_IGNORE_OUTGOING, so they never read their own output.
// SO_MARK tags every injected packet so the steering chains recognise it
// and do not steer it a second time.
//
// The sockets are raw unix sockets rather than mdlayher/packet: a bound
// packet socket sends with write(2) and no address, which does not allocate
// per packet (packet.Conn.WriteTo builds a sockaddr for every call).
//
// The write is a raw system call on a non-blocking socket: the write of a
// frame into a veth runs the receiving side's network stack inline (tens of
// microseconds), and through syscall.Syscall the Go scheduler's monitor
// would take the writer's P away, hand it to another thread and wake
// itself every 20 µs while the daemon injects (measured: ~12 % of the
// daemon's CPU in sysmon and thread hand-offs). A raw write keeps the P;
// the socket never blocks it (a full send buffer is EAGAIN, waited out
// with poll(2), which goes through the scheduler as usual).
package inject

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"github.com/trireme-go/trireme/netsetup/vnet"
	"golang.org/x/sys/unix"
)

// packetIgnoreOutgoing is PACKET_IGNORE_OUTGOING (linux/if_packet.h).
const packetIgnoreOutgoing = 23

// ErrShort is returned for a write that cannot hold a virtio-net header and
// an Ethernet header.
var ErrShort = errors.New("inject: frame shorter than virtio-net + Ethernet header")

// Injector writes frames on one interface. Write is safe for concurrent use.
type Injector struct {
	mu      sync.RWMutex
	fd      int
	ifindex int
}

// New opens an injector on the interface with the given index. mark is put
// on every packet (SO_MARK); 0 means no mark.
func New(ifindex int, mark uint32) (*Injector, error) {
	if ifindex <= 0 {
		return nil, fmt.Errorf("inject: invalid ifindex %d", ifindex)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("inject: socket: %w", err)
	}
	opts := []struct {
		level, opt, val int
		name            string
	}{
		{unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1, "PACKET_VNET_HDR"},
		{unix.SOL_PACKET, packetIgnoreOutgoing, 1, "PACKET_IGNORE_OUTGOING"},
		{unix.SOL_SOCKET, unix.SO_MARK, int(mark), "SO_MARK"},
	}
	for _, o := range opts {
		if o.opt == unix.SO_MARK && mark == 0 {
			continue
		}
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.val); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("inject: %s: %w", o.name, err)
		}
	}
	// Protocol 0: the socket is bound to the device for sending but no
	// packet is ever delivered to it.
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifindex}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("inject: bind to ifindex %d: %w", ifindex, err)
	}
	return &Injector{fd: fd, ifindex: ifindex}, nil
}

// Write sends one frame: a virtio-net header (vnet.HdrLen bytes) followed by
// the Ethernet frame. A GSO super-packet is segmented by the kernel.
func (j *Injector) Write(b []byte) error {
	if len(b) < vnet.HdrLen+14 {
		return ErrShort
	}
	j.mu.RLock()
	defer j.mu.RUnlock()
	if j.fd < 0 {
		return unix.EBADF
	}
	for {
		_, _, errno := unix.RawSyscall(unix.SYS_WRITE, uintptr(j.fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
		case unix.EAGAIN:
			// The send buffer is full (frames not yet freed by the
			// device): wait for room like a blocking socket would.
			pfd := [1]unix.PollFd{{Fd: int32(j.fd), Events: unix.POLLOUT}}
			if _, err := unix.Poll(pfd[:], sendWait); err != nil && err != unix.EINTR {
				return err
			}
		default:
			return errno
		}
	}
}

// sendWait bounds one wait for send-buffer room (ms); the write is retried
// after it.
const sendWait = 100

// Ifindex is the interface the injector writes on.
func (j *Injector) Ifindex() int { return j.ifindex }

// Close closes the socket.
func (j *Injector) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.fd < 0 {
		return nil
	}
	err := unix.Close(j.fd)
	j.fd = -1
	return err
}
