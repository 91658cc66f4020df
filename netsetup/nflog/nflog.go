// Package nflog reads the packets netfilter logs to an NFLOG group
// (nfnetlink_log), as the steering rules do for the FINs and RSTs of the
// flows the kernel carries (netsetup/steer, docs/steering.md): one netlink
// socket bound to the group, batched by the kernel (a queue threshold and a
// flush timeout), read with raw system calls through the runtime poller
// into one reused buffer, parsed without allocation.
//
// What a message carries is controlled by a PU or the wire (the logged
// packet) and by the kernel (the rest): Messages parses defensively and
// reports a named error, never a panic.
package nflog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/trireme-go/trireme/netsetup/rawread"
)

// Netfilter hooks of the netdev family (the message's hook).
const (
	HookIngress = 0 // NF_NETDEV_INGRESS: the packet entered the device
	HookEgress  = 1 // NF_NETDEV_EGRESS: the packet leaves by the device
)

// nfnetlink_log protocol (linux/netfilter/nfnetlink_log.h).
const (
	subsysULOG  = 4 // NFNL_SUBSYS_ULOG
	msgPacket   = 0 // NFULNL_MSG_PACKET
	msgConfig   = 1 // NFULNL_MSG_CONFIG
	typePacket  = subsysULOG<<8 | msgPacket
	typeConfig  = subsysULOG<<8 | msgConfig
	cfgCmd      = 1 // NFULA_CFG_CMD
	cfgMode     = 2 // NFULA_CFG_MODE
	cfgNLBufSiz = 3 // NFULA_CFG_NLBUFSIZ
	cfgTimeout  = 4 // NFULA_CFG_TIMEOUT
	cfgQThresh  = 5 // NFULA_CFG_QTHRESH
	cmdBind     = 1 // NFULNL_CFG_CMD_BIND
	copyPacket  = 2 // NFULNL_COPY_PACKET

	attrPacketHdr = 1  // NFULA_PACKET_HDR
	attrInDev     = 4  // NFULA_IFINDEX_INDEV
	attrOutDev    = 5  // NFULA_IFINDEX_OUTDEV
	attrPayload   = 9  // NFULA_PAYLOAD
	attrHWHeader  = 16 // NFULA_HWHEADER

	nlmsgHdrLen = 16
	nfgenLen    = 4
)

// Errors.
var (
	// ErrBusy: another socket is bound to the group.
	ErrBusy = errors.New("nflog: group in use")
	// ErrOverrun: the socket's receive buffer overflowed; logged packets
	// were lost (the kernel reported ENOBUFS).
	ErrOverrun = errors.New("nflog: receive buffer overrun, messages lost")
	// ErrMalformed: a message that is not a well-formed nfnetlink_log
	// packet message.
	ErrMalformed = errors.New("nflog: malformed message")
	// ErrFrame: a logged packet that no Ethernet frame can be made of
	// (no link-layer header, not IPv4 or IPv6, headers cut short).
	ErrFrame = errors.New("nflog: logged packet is no IP packet with its headers")
)

// Config of a Reader.
type Config struct {
	Group uint16
	// Snaplen bounds the bytes of each packet copied (the rule's own
	// snaplen applies first); 0: 0xffff.
	Snaplen uint32
	// FlushTimeout is how long the kernel holds a batch that has not
	// reached the rule's queue threshold, in hundredths of a second
	// (NFULA_CFG_TIMEOUT); 0: the kernel's default (1 s).
	FlushTimeout uint32
	// QueueThreshold is the batch size when the rule gives none.
	QueueThreshold uint32
	// BufSize is the kernel's batch buffer (NFULA_CFG_NLBUFSIZ); 0: its
	// default (a page).
	BufSize uint32
	// RcvBuf is the socket's receive buffer; 0: the system's default.
	RcvBuf int
}

// Reader is a socket bound to one NFLOG group. Read is for one goroutine;
// Close may be called from any.
type Reader struct {
	f      *os.File
	rc     syscall.RawConn
	group  uint16
	rd     rawread.Reader
	closed atomic.Bool
	// Overruns counts ENOBUFS reports (batches lost).
	Overruns atomic.Uint64
}

// Open binds a socket of the current network namespace to cfg.Group and
// configures the group: whole packets (up to Snaplen), the batching.
func Open(cfg Config) (*Reader, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("nflog: socket: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("nflog: bind: %w", err)
	}
	if cfg.RcvBuf > 0 {
		// FORCE needs CAP_NET_ADMIN (the daemon has it); else the
		// ordinary option, bounded by rmem_max.
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, cfg.RcvBuf) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, cfg.RcvBuf)
		}
	}
	// Lost batches are reported (ENOBUFS) rather than silently skipped.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 0)
	if err := configure(fd, cfg); err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("nflog: non-blocking: %w", err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("nflog:%d", cfg.Group))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		ok = true // closed by f
		return nil, fmt.Errorf("nflog: %w", err)
	}
	ok = true
	r := &Reader{f: f, rc: rc, group: cfg.Group}
	r.rd.Init(r.rc)
	return r, nil
}

// configure binds the group and sets it up, one request acknowledged each.
func configure(fd int, cfg Config) error {
	if err := request(fd, cfg.Group, attr(nil, cfgCmd, []byte{cmdBind})); err != nil {
		// Bound by another socket: EPERM (the group's instance belongs to
		// another port), EBUSY (bound twice by this one).
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%w: %d", ErrBusy, cfg.Group)
		}
		return fmt.Errorf("nflog: bind group %d: %w", cfg.Group, err)
	}
	snap := cfg.Snaplen
	if snap == 0 {
		snap = 0xffff
	}
	var mode [6]byte
	binary.BigEndian.PutUint32(mode[0:], snap)
	mode[4] = copyPacket
	b := attr(nil, cfgMode, mode[:])
	for _, a := range []struct {
		typ uint16
		v   uint32
	}{{cfgTimeout, cfg.FlushTimeout}, {cfgQThresh, cfg.QueueThreshold}, {cfgNLBufSiz, cfg.BufSize}} {
		if a.v != 0 {
			b = attr(b, a.typ, binary.BigEndian.AppendUint32(nil, a.v))
		}
	}
	if err := request(fd, cfg.Group, b); err != nil {
		return fmt.Errorf("nflog: configure group %d: %w", cfg.Group, err)
	}
	return nil
}

// attr appends a netlink attribute.
func attr(b []byte, typ uint16, data []byte) []byte {
	n := 4 + len(data)
	b = binary.NativeEndian.AppendUint16(b, uint16(n))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for range align(n) - n {
		b = append(b, 0)
	}
	return b
}

func align(n int) int { return (n + 3) &^ 3 }

// request sends a config message for group and waits for its
// acknowledgement (the socket is still blocking).
func request(fd int, group uint16, attrs []byte) error {
	msg := make([]byte, nlmsgHdrLen+nfgenLen, nlmsgHdrLen+nfgenLen+len(attrs))
	binary.NativeEndian.PutUint32(msg[0:], uint32(nlmsgHdrLen+nfgenLen+len(attrs)))
	binary.NativeEndian.PutUint16(msg[4:], typeConfig)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], 1)
	msg[16] = unix.AF_UNSPEC
	binary.BigEndian.PutUint16(msg[18:], group)
	msg = append(msg, attrs...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return err
		}
		for b := buf[:n]; len(b) >= nlmsgHdrLen; {
			l := int(binary.NativeEndian.Uint32(b))
			if l < nlmsgHdrLen || l > len(b) {
				return ErrMalformed
			}
			if binary.NativeEndian.Uint16(b[4:]) == unix.NLMSG_ERROR && l >= nlmsgHdrLen+4 {
				if e := int32(binary.NativeEndian.Uint32(b[16:])); e != 0 {
					return unix.Errno(-e)
				}
				return nil
			}
			b = b[min(align(l), len(b)):]
		}
	}
}

// Group is the group the reader is bound to.
func (r *Reader) Group() uint16 { return r.group }

// Read reads one batch (one datagram: one or more messages) into b and
// returns it; parse it with Messages. A lost batch is ErrOverrun (counted
// in Overruns; reading goes on). After Close: os.ErrClosed.
func (r *Reader) Read(b []byte) ([]byte, error) {
	n, errno, err := r.rd.Read(b)
	if err != nil {
		if r.closed.Load() {
			return nil, os.ErrClosed
		}
		return nil, err
	}
	switch errno {
	case 0:
		return b[:n], nil
	case unix.ENOBUFS:
		r.Overruns.Add(1)
		return nil, ErrOverrun
	}
	return nil, errno
}

// Close closes the socket (the group is unbound) and interrupts Read.
func (r *Reader) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	return r.f.Close()
}

// Packet is one logged packet, its slices pointing into the batch read.
type Packet struct {
	// Hook is where it was logged (HookIngress, HookEgress for netdev
	// chains); Family the nfgenmsg family (unix.NFPROTO_NETDEV).
	Hook, Family uint8
	// HWProtocol is the packet's EtherType (skb->protocol).
	HWProtocol uint16
	// InDev and OutDev are the ifindexes of the devices (0: none).
	InDev, OutDev uint32
	// HWHeader is the link-layer header (at an ingress hook; the payload
	// starts at the network header there). Payload is what was copied of
	// the packet: at an egress hook from the link-layer header on.
	HWHeader, Payload []byte
}

// Messages iterates over the packet messages of a batch.
type Messages struct {
	b []byte
}

// NewMessages returns an iterator over batch.
func NewMessages(batch []byte) Messages { return Messages{b: batch} }

// Next parses the next packet message into p. It returns false at the end
// of the batch. A malformed message ends the batch with ErrMalformed (the
// kernel frames its messages: nothing after one it got wrong is trusted);
// messages of other types (the end of a multipart batch, errors) are
// skipped.
func (m *Messages) Next(p *Packet) (bool, error) {
	for len(m.b) > 0 {
		if len(m.b) < nlmsgHdrLen {
			m.b = nil
			return false, ErrMalformed
		}
		l := int(binary.NativeEndian.Uint32(m.b))
		if l < nlmsgHdrLen || l > len(m.b) {
			m.b = nil
			return false, ErrMalformed
		}
		msg := m.b[:l]
		m.b = m.b[min(align(l), len(m.b)):]
		if binary.NativeEndian.Uint16(msg[4:]) != typePacket {
			continue
		}
		if err := parsePacket(msg[nlmsgHdrLen:], p); err != nil {
			m.b = nil
			return false, err
		}
		return true, nil
	}
	return false, nil
}

func parsePacket(b []byte, p *Packet) error {
	*p = Packet{}
	if len(b) < nfgenLen {
		return ErrMalformed
	}
	p.Family = b[0]
	b = b[nfgenLen:]
	hdr := false
	for len(b) > 0 {
		if len(b) < 4 {
			return ErrMalformed
		}
		l := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < 4 || l > len(b) {
			return ErrMalformed
		}
		v := b[4:l]
		b = b[min(align(l), len(b)):]
		switch typ {
		case attrPacketHdr:
			if len(v) < 4 {
				return ErrMalformed
			}
			p.HWProtocol, p.Hook, hdr = binary.BigEndian.Uint16(v), v[2], true
		case attrInDev, attrOutDev:
			if len(v) != 4 {
				return ErrMalformed
			}
			if typ == attrInDev {
				p.InDev = binary.BigEndian.Uint32(v)
			} else {
				p.OutDev = binary.BigEndian.Uint32(v)
			}
		case attrPayload:
			p.Payload = v
		case attrHWHeader:
			p.HWHeader = v
		}
	}
	if !hdr {
		return ErrMalformed
	}
	return nil
}

// Ethernet and IP framing.
const (
	ethLen   = 14
	etherIP4 = 0x0800
	etherIP6 = 0x86dd
)

// MaxFrame is the size of the buffer Frame needs: an Ethernet header and
// the largest IP packet (its payload is not copied, only its length kept).
const MaxFrame = ethLen + 40 + 0xffff

// Frame writes into dst (MaxFrame bytes) the Ethernet frame of a packet
// logged by a netdev chain of an Ethernet device, headers only: the
// link-layer header (from HWHeader at ingress, from the payload at
// egress), then the IP and transport headers as copied, and the rest of
// the IP packet's length as whatever dst held (the payload is not logged;
// its length is the IP header's). The frame decodes as the packet did, its
// payload aside. VLAN-tagged frames are refused (the steering rules do not
// log them).
func (p *Packet) Frame(dst []byte) ([]byte, error) {
	if len(dst) < MaxFrame {
		return nil, ErrFrame
	}
	var l2, ip []byte
	switch p.Hook {
	case HookIngress:
		l2, ip = p.HWHeader, p.Payload
	case HookEgress:
		if len(p.Payload) < ethLen {
			return nil, ErrFrame
		}
		l2, ip = p.Payload[:ethLen], p.Payload[ethLen:]
	default:
		return nil, ErrFrame
	}
	if len(l2) != ethLen {
		return nil, ErrFrame
	}
	et := binary.BigEndian.Uint16(l2[12:])
	var total int
	switch {
	case et == etherIP4 && len(ip) >= 20 && ip[0]>>4 == 4:
		total = int(binary.BigEndian.Uint16(ip[2:]))
		if hl := int(ip[0]&0x0f) * 4; total < hl || hl < 20 || len(ip) < hl+20 {
			return nil, ErrFrame
		}
	case et == etherIP6 && len(ip) >= 40+20 && ip[0]>>4 == 6:
		total = 40 + int(binary.BigEndian.Uint16(ip[4:]))
	default:
		return nil, ErrFrame
	}
	// What was copied beyond the IP packet (link-layer padding) is left
	// out; a total shorter than the headers copied is the header's word.
	n := copy(dst, l2)
	copy(dst[n:], ip[:min(len(ip), total)])
	return dst[:ethLen+total], nil
}
