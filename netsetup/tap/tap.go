// Package tap opens the persistent TAP devices the steering rules duplicate
// packets into. Every TAP is opened with IFF_VNET_HDR and TUNSETOFFLOAD
// (checksum + TSO4/6), so a read returns a virtio-net header (vnet.HdrLen
// bytes) followed by the Ethernet frame, and GSO super-packets and partial
// checksums arrive intact instead of being segmented or broken.
//
// The devices are persistent: they and their ifindex (which the nftables
// rules store) outlive the process. While no process has a TAP open,
// packets steered into it are dropped: that is the fail-closed behaviour.
package tap

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/netsetup/frameport"
	"github.com/trireme-go/trireme/netsetup/rawread"
	"github.com/trireme-go/trireme/netsetup/vnet"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// MaxFrame is the buffer size that holds any frame a TAP can deliver:
// the virtio-net header plus a 64 KiB GSO super-packet with its Ethernet
// and VLAN headers. Read refuses smaller buffers.
const MaxFrame = vnet.HdrLen + 65536 + 14 + 4 + 256

// Offloads requested with TUNSETOFFLOAD: partial checksums and TCP
// segmentation offload for IPv4 and IPv6.
const Offloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6

// Errors.
var (
	ErrShortBuffer = errors.New("tap: read buffer smaller than tap.MaxFrame")
	// ErrTruncated: a frame filled the whole buffer and may be truncated.
	ErrTruncated = frameport.ErrTruncated
)

const tunFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR

// Tap is an open persistent TAP device. Read and Close may be called from
// different goroutines; Close unblocks a pending Read.
type Tap struct {
	f      *os.File
	rc     syscall.RawConn
	name   string
	index  int
	closed atomic.Bool

	rmu sync.Mutex // one Read at a time uses rd
	rd  rawread.Reader
}

// Open opens the persistent TAP called name, creating it (with
// vishvananda/netlink's Tuntap) if it does not exist, and brings it up.
// Re-opening an existing TAP keeps its ifindex. Only one process can have a
// TAP open at a time (EBUSY otherwise).
func Open(name string) (*Tap, error) { return OpenOwned(name, "") }

// OpenOwned is Open, and the TAP carries owner (if not "") as its alias:
// the mark by which its owner later knows it made it (netsetup/owner.go).
func OpenOwned(name, owner string) (*Tap, error) {
	if err := netsetup.CheckLinkName(name); err != nil {
		return nil, err
	}
	var f *os.File
	configured := false
	if l, err := netlink.LinkByName(name); err == nil {
		if _, ok := l.(*netlink.Tuntap); !ok {
			return nil, fmt.Errorf("tap: %s exists and is a %s", name, l.Type())
		}
		if f, err = reopen(name); err != nil {
			return nil, err
		}
		// setup brings a TAP up last: one that is up (and without ARP)
		// was set up by an earlier Open and kept its settings. Skipping
		// them makes a restart with a thousand PUs a second faster.
		a := l.Attrs()
		configured = a.RawFlags&unix.IFF_UP != 0 && a.RawFlags&unix.IFF_NOARP != 0
	} else {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		tt := &netlink.Tuntap{
			LinkAttrs: attrs,
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
			Queues:    1, // keep the queue fd open (Queues 0 closes it)
		}
		if err := netlink.LinkAdd(tt); err != nil {
			return nil, fmt.Errorf("tap: create %s: %w", name, err)
		}
		if len(tt.Fds) != 1 {
			_ = Delete(name)
			return nil, fmt.Errorf("tap: create %s: got %d queue fds", name, len(tt.Fds))
		}
		f = tt.Fds[0]
	}
	t := &Tap{f: f, name: name}
	if err := t.setup(configured, owner); err != nil {
		f.Close()
		return nil, err
	}
	t.rd.Init(t.rc)
	return t, nil
}

// reopen attaches to an existing TAP with TUNSETIFF.
func reopen(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tap: open /dev/net/tun: %w", err)
	}
	req, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap: %s: %w", name, err)
	}
	req.SetUint16(tunFlags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, req); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap: attach %s: %w", name, err)
	}
	// Non-blocking before os.NewFile, so reads go through the runtime
	// poller and Close interrupts them.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap: %s non-blocking: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

func (t *Tap) setup(configured bool, owner string) error {
	rc, err := t.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("tap: %s: %w", t.name, err)
	}
	t.rc = rc
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, Offloads)
		if ierr == nil {
			// The header size is 10 by default; set it anyway so a device
			// left with another size by someone else reads as we expect.
			ierr = unix.IoctlSetPointerInt(int(fd), unix.TUNSETVNETHDRSZ, vnet.HdrLen)
		}
	}); err != nil {
		return fmt.Errorf("tap: %s: %w", t.name, err)
	}
	if ierr != nil {
		return fmt.Errorf("tap: %s offloads: %w", t.name, ierr)
	}
	l, err := netlink.LinkByName(t.name)
	if err != nil {
		return fmt.Errorf("tap: find %s: %w", t.name, err)
	}
	t.index = l.Attrs().Index
	if owner != "" && l.Attrs().Alias != owner {
		if err := netlink.LinkSetAlias(l, owner); err != nil {
			return fmt.Errorf("tap: mark %s: %w", t.name, err)
		}
	}
	if configured {
		return nil
	}
	// The kernel must send nothing of its own into the TAP (IPv6 router
	// solicitations, ARP): readers see only steered packets.
	if err := netsetup.DisableIPv6(t.name); err != nil {
		return err
	}
	if err := netlink.LinkSetARPOff(l); err != nil {
		return fmt.Errorf("tap: noarp %s: %w", t.name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("tap: %s up: %w", t.name, err)
	}
	return nil
}

// Name returns the device name.
func (t *Tap) Name() string { return t.name }

// Index returns the device's ifindex (what the steering rules point at).
func (t *Tap) Index() int { return t.index }

// Read reads one frame: a virtio-net header followed by the Ethernet frame.
// b must hold MaxFrame bytes; a frame that fills b entirely is reported as
// ErrTruncated rather than returned cut short.
func (t *Tap) Read(b []byte) (int, error) {
	if len(b) < MaxFrame {
		return 0, ErrShortBuffer
	}
	t.rmu.Lock()
	n, errno, err := t.rd.Read(b)
	t.rmu.Unlock()
	if err != nil {
		if t.closed.Load() {
			return 0, os.ErrClosed
		}
		return 0, err
	}
	if errno != 0 {
		return 0, errno
	}
	if n == 0 {
		return 0, io.EOF
	}
	if n >= len(b) {
		return 0, ErrTruncated
	}
	return n, nil
}

// Close detaches from the TAP; the device and its ifindex remain.
func (t *Tap) Close() error {
	t.closed.Store(true)
	err := t.f.Close()
	if errors.Is(err, os.ErrClosed) {
		return nil
	}
	return err
}

// Delete removes a persistent TAP; a missing one is not an error.
func Delete(name string) error { return netsetup.DeleteLink(name) }

// IsClosed reports whether err is the error Read returns after Close.
func IsClosed(err error) bool { return frameport.IsClosed(err) }
