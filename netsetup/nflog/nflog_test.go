package nflog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// msg builds one packet message as nfnetlink_log sends it.
func msg(family, hook uint8, proto uint16, in, out uint32, hw, payload []byte) []byte {
	var a []byte
	a = attr(a, attrPacketHdr, []byte{byte(proto >> 8), byte(proto), hook, 0})
	if in != 0 {
		a = attr(a, attrInDev, binary.BigEndian.AppendUint32(nil, in))
	}
	if out != 0 {
		a = attr(a, attrOutDev, binary.BigEndian.AppendUint32(nil, out))
	}
	if hw != nil {
		a = attr(a, attrHWHeader, hw)
	}
	a = attr(a, attrPayload, payload)
	b := make([]byte, nlmsgHdrLen+nfgenLen)
	binary.NativeEndian.PutUint32(b, uint32(len(b)+len(a)))
	binary.NativeEndian.PutUint16(b[4:], typePacket)
	b[16] = family
	return append(b, a...)
}

func done() []byte {
	b := make([]byte, nlmsgHdrLen+4)
	binary.NativeEndian.PutUint32(b, uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], unix.NLMSG_DONE)
	return b
}

var (
	puMAC   = []byte{2, 0, 0, 0, 0, 1}
	peerMAC = []byte{2, 0, 0, 0, 0, 2}
)

func eth(dst, src []byte, et uint16) []byte {
	return binary.BigEndian.AppendUint16(append(append([]byte{}, dst...), src...), et)
}

// ip4TCP is an IPv4 header and a TCP header (flags FIN|ACK) of a packet
// whose IP length says it carries n bytes of data (not included).
func ip4TCP(n int) []byte {
	b := make([]byte, 40)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(40+n))
	b[8], b[9] = 64, 6
	copy(b[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
	binary.BigEndian.PutUint16(b[20:], 40000)
	binary.BigEndian.PutUint16(b[22:], 80)
	binary.BigEndian.PutUint32(b[24:], 1000)
	binary.BigEndian.PutUint32(b[28:], 2000)
	b[32] = 5 << 4
	b[33] = 0x11
	return b
}

func ip6TCP(n int) []byte {
	b := make([]byte, 60)
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(20+n))
	b[6], b[7] = 6, 64
	b[23], b[39] = 1, 2
	b[40+12] = 5 << 4
	b[40+13] = 0x04
	return b
}

func TestMessagesAndFrame(t *testing.T) {
	ingress := msg(unix.NFPROTO_NETDEV, HookIngress, 0x0800, 7, 0, eth(peerMAC, puMAC, 0x0800), ip4TCP(1000))
	egress := msg(unix.NFPROTO_NETDEV, HookEgress, 0x86dd, 0, 9, nil, append(eth(puMAC, peerMAC, 0x86dd), ip6TCP(3)...))
	batch := append(append(append([]byte{}, ingress...), egress...), done()...)
	m := NewMessages(batch)
	frame := make([]byte, MaxFrame)
	var p Packet

	ok, err := m.Next(&p)
	if !ok || err != nil || p.Hook != HookIngress || p.InDev != 7 || p.OutDev != 0 || p.HWProtocol != 0x0800 || p.Family != unix.NFPROTO_NETDEV {
		t.Fatalf("ingress message: %v %v %+v", ok, err, p)
	}
	f, err := p.Frame(frame)
	if err != nil || len(f) != 14+40+1000 || !bytes.Equal(f[:14], eth(peerMAC, puMAC, 0x0800)) || !bytes.Equal(f[14:54], ip4TCP(1000)) {
		t.Fatalf("ingress frame: %v len %d %x", err, len(f), f[:min(len(f), 54)])
	}
	ok, err = m.Next(&p)
	if !ok || err != nil || p.Hook != HookEgress || p.OutDev != 9 {
		t.Fatalf("egress message: %v %v %+v", ok, err, p)
	}
	f, err = p.Frame(frame)
	if err != nil || len(f) != 14+60+3 || !bytes.Equal(f[:14], eth(puMAC, peerMAC, 0x86dd)) || !bytes.Equal(f[14:74], ip6TCP(3)) {
		t.Fatalf("egress frame: %v len %d", err, len(f))
	}
	if ok, err = m.Next(&p); ok || err != nil {
		t.Fatalf("after the last message: %v %v", ok, err)
	}
}

func TestFrameRefuses(t *testing.T) {
	frame := make([]byte, MaxFrame)
	short := ip4TCP(0)
	short[0] = 0x46 // 24-byte header: the TCP header is cut short
	vlan := append(eth(puMAC, peerMAC, 0x8100), 0, 5, 0x08, 0)
	for name, p := range map[string]Packet{
		"ingress without link header": {Hook: HookIngress, Payload: ip4TCP(0)},
		"egress too short":            {Hook: HookEgress, Payload: []byte{1, 2, 3}},
		"another hook":                {Hook: 3, HWHeader: eth(puMAC, peerMAC, 0x0800), Payload: ip4TCP(0)},
		"not IP":                      {Hook: HookIngress, HWHeader: eth(puMAC, peerMAC, 0x0806), Payload: ip4TCP(0)},
		"version mismatch":            {Hook: HookIngress, HWHeader: eth(puMAC, peerMAC, 0x86dd), Payload: ip4TCP(0)},
		"headers cut":                 {Hook: HookIngress, HWHeader: eth(puMAC, peerMAC, 0x0800), Payload: short},
		"ipv6 cut":                    {Hook: HookIngress, HWHeader: eth(puMAC, peerMAC, 0x86dd), Payload: ip6TCP(0)[:50]},
		"vlan tag":                    {Hook: HookEgress, Payload: append(vlan, ip4TCP(0)...)},
	} {
		if _, err := p.Frame(frame); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: %v, want ErrFrame", name, err)
		}
	}
	p := Packet{Hook: HookIngress, HWHeader: eth(puMAC, peerMAC, 0x0800), Payload: ip4TCP(0)}
	if _, err := p.Frame(make([]byte, 100)); !errors.Is(err, ErrFrame) {
		t.Errorf("short buffer: %v", err)
	}
}

func TestMessagesMalformed(t *testing.T) {
	good := msg(unix.NFPROTO_NETDEV, HookIngress, 0x0800, 7, 0, eth(peerMAC, puMAC, 0x0800), ip4TCP(0))
	noHdr := msg(unix.NFPROTO_NETDEV, HookIngress, 0x0800, 7, 0, nil, ip4TCP(0))
	noHdr = append(noHdr[:nlmsgHdrLen+nfgenLen], noHdr[nlmsgHdrLen+nfgenLen+8:]...) // drop the packet header attribute
	binary.NativeEndian.PutUint32(noHdr, uint32(len(noHdr)))
	badAttr := append([]byte{}, good...)
	binary.NativeEndian.PutUint16(badAttr[nlmsgHdrLen+nfgenLen:], 200) // longer than the message
	badDev := append([]byte{}, good...)
	binary.NativeEndian.PutUint16(badDev[nlmsgHdrLen+nfgenLen+8:], 6) // ifindex of 2 bytes
	long := append([]byte{}, good...)
	binary.NativeEndian.PutUint32(long, uint32(len(long)+1))
	for name, b := range map[string][]byte{
		"short header":         good[:10],
		"length beyond batch":  long,
		"no packet header":     noHdr,
		"attribute too long":   badAttr,
		"ifindex wrong length": badDev,
		"no nfgenmsg":          good[:nlmsgHdrLen+2],
	} {
		if name == "no nfgenmsg" {
			b = append([]byte{}, b...)
			binary.NativeEndian.PutUint32(b, uint32(len(b)))
		}
		m := NewMessages(b)
		var p Packet
		if ok, err := m.Next(&p); ok || !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v %v, want ErrMalformed", name, ok, err)
		}
		if ok, err := m.Next(&p); ok || err != nil {
			t.Errorf("%s: the batch goes on after a malformed message", name)
		}
	}
}

// FuzzMessages: whatever a batch holds, parsing and framing never panic,
// and a frame made is within the buffer and starts with the link header.
func FuzzMessages(f *testing.F) {
	f.Add(msg(unix.NFPROTO_NETDEV, HookIngress, 0x0800, 7, 0, eth(peerMAC, puMAC, 0x0800), ip4TCP(10)))
	f.Add(msg(unix.NFPROTO_NETDEV, HookEgress, 0x86dd, 0, 9, nil, append(eth(puMAC, peerMAC, 0x86dd), ip6TCP(3)...)))
	f.Add(append(msg(unix.NFPROTO_NETDEV, HookEgress, 0x0800, 0, 9, nil, eth(puMAC, peerMAC, 0x0800)), done()...))
	frame := make([]byte, MaxFrame)
	f.Fuzz(func(t *testing.T, b []byte) {
		m := NewMessages(b)
		var p Packet
		for range len(b) + 1 {
			ok, _ := m.Next(&p)
			if !ok {
				return
			}
			fr, err := p.Frame(frame)
			if err == nil && (len(fr) < ethLen+20 || len(fr) > MaxFrame) {
				t.Fatalf("frame of %d bytes", len(fr))
			}
		}
		t.Fatal("more messages than bytes")
	})
}

// TestOpenBusy binds a group (root) and a second socket cannot.
func TestOpenBusy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	var r *Reader
	var err error
	g := uint16(0x7f00 + os.Getpid()%0xff)
	for range 16 {
		if r, err = Open(Config{Group: g, Snaplen: 128, FlushTimeout: 1, QueueThreshold: 4}); !errors.Is(err, ErrBusy) {
			break
		}
		g++
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	if r.Group() != g {
		t.Fatalf("group %d, want %d", r.Group(), g)
	}
	if _, err := Open(Config{Group: g}); !errors.Is(err, ErrBusy) {
		t.Fatalf("second bind of group %d: %v, want ErrBusy", g, err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := r.Read(make([]byte, 4096))
		done <- err
	}()
	r.Close()
	if err := <-done; !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
}
