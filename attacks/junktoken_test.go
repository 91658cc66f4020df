package attacks

import (
	"bytes"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/testenv"
	"github.com/trireme-go/trireme/tokens"
)

// TestJunkTokens: a host inside the target networks that runs no enforcer
// sends SYNs whose token carries a real node certificate and a signature
// that does not verify (each costs a public-key verification the first
// time). The same junk token again is refused from the failure cache
// (bad-signature, no public-key work); fresh junk tokens from one source
// are refused once its verification budget is spent (verify-rate-limited,
// no public-key work). Nothing reaches db's socket.
func TestJunkTokens(t *testing.T) {
	s := newScene(t, sceneOptions{})
	rogue := s.node.AddPU() // not attached: no enforcer on its side
	db, accepted := acceptLog(t, s.db, 5432)

	// A valid SYN token frame of a real node (the daemon's own certificate,
	// as an attacker copies it from a captured SYN), its signature spoiled.
	pki := filepath.Join(s.d.Dir, "pki")
	sec, err := tokens.LoadPKI(filepath.Join(pki, "ca.crt"), filepath.Join(pki, "node.crt"), filepath.Join(pki, "node.key"))
	if err != nil {
		t.Fatal(err)
	}
	eng, err := tokens.New(tokens.Config{Secrets: sec})
	if err != nil {
		t.Fatal(err)
	}
	var c tokens.Conn
	frame, err := eng.AppendSYN(nil, eng.NewLocal(identity.NewTags(map[string]string{"app": "web"})), &c, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sig := bytes.LastIndexByte(frame, '.') + 10
	// One character changed for good: no junk(i) is the real signature.
	if frame[sig+4] == 'A' {
		frame[sig+4] = 'B'
	} else {
		frame[sig+4] = 'A'
	}
	const b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	junk := func(i int) []byte {
		f := bytes.Clone(frame)
		for j := 0; j < 3; j++ {
			f[sig+j] = b64[(i>>(6*j))&63]
		}
		return f
	}

	raw := rogue.Raw()
	rogueMAC, dbMAC := rogue.MACOf(), s.db.MACOf()
	port := 20000
	send := func(tok []byte) {
		port++
		raw.MustSend(synWithToken(rogueMAC, dbMAC, netip.AddrPortFrom(rogue.Addr, uint16(port)), db, tok))
	}
	stats := func() (drops, counters map[string]uint64) {
		st, err := s.d.Client().Stats()
		if err != nil {
			t.Fatal(err)
		}
		return st.Drops, st.Counters
	}
	refused := func(d map[string]uint64) uint64 { return d["bad-signature"] + d["verify-rate-limited"] }
	// sendAll sends n junk SYNs (the i-th carrying tok(i)) in batches, each
	// until the daemon has counted it: frames the kernel loses on the way
	// under load (a full backlog) are sent again, so that n reach the
	// enforcer whatever the machine's load.
	sendAll := func(n int, tok func(i int) []byte) map[string]uint64 {
		d0, _ := stats()
		deadline := time.Now().Add(30 * time.Second)
		i := 0
		for {
			d, _ := stats()
			done := int(refused(d) - refused(d0))
			if done >= n {
				return d
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d junk SYNs refused (drops before %v, now %v)", done, n, d0, d)
			}
			for range min(10, n-done) {
				send(tok(i))
				i++
			}
			for wait := time.Now().Add(time.Second); time.Now().Before(wait); time.Sleep(10 * time.Millisecond) {
				if d, _ := stats(); int(refused(d)-refused(d0)) >= min(n, done+10) {
					break
				}
			}
		}
	}

	// The same junk token, 200 times.
	_, c0 := stats()
	d0, _ := stats()
	const same = 200
	d1 := sendAll(same, func(int) []byte { return junk(0) })
	_, c1 := stats()
	n1 := d1["bad-signature"] - d0["bad-signature"]
	if n1 < same || d1["verify-rate-limited"] != d0["verify-rate-limited"] {
		t.Fatalf("same junk token: %d bad-signature drops for %d SYNs (drops %v)", n1, same, d1)
	}
	if hits := c1["token-failure-cache-hits"] - c0["token-failure-cache-hits"]; hits < n1-1 {
		t.Fatalf("same junk token: %d failure-cache hits for %d SYNs", hits, n1)
	}
	if ops := c1["public-key-ops"] - c0["public-key-ops"]; ops > 2 {
		t.Fatalf("the same junk token %d times cost %d public-key operations, want at most 2 (certificate, signature)", n1, ops)
	}

	// 100 fresh junk tokens from the same source: once its budget (20 at
	// once, 10 a second) is spent, they are refused without verification.
	const fresh = 100
	began := time.Now()
	d2 := sendAll(fresh, func(i int) []byte { return junk(1 + i) })
	elapsed := time.Since(began).Seconds()
	_, c2 := stats()
	limited := d2["verify-rate-limited"] - d1["verify-rate-limited"]
	verified := d2["bad-signature"] - d1["bad-signature"]
	ops := c2["public-key-ops"] - c1["public-key-ops"]
	// What the budget allows: the burst (one spent above) and the refill
	// over the time the SYNs took, each verification at most two
	// public-key operations (certificate, signature).
	allowed := 20 + uint64(10*elapsed) + 1
	if limited == 0 || verified > allowed || ops > 2*verified+2 {
		t.Fatalf("fresh junk tokens from one source over %.1fs: %d verified (budget %d), %d verify-rate-limited, %d public-key operations (drops %v)",
			elapsed, verified, allowed, limited, ops, d2)
	}
	if n := accepted(rogue.Addr); n != 0 {
		t.Fatalf("db accepted %d connections from the rogue host", n)
	}
	t.Logf("%d identical junk SYNs: %d public-key operations, %d failure-cache hits; %d fresh junk SYNs from one source in %.1fs: %d verified, %d verify-rate-limited, %d public-key operations",
		n1, c1["public-key-ops"]-c0["public-key-ops"], c1["token-failure-cache-hits"]-c0["token-failure-cache-hits"], verified+limited, elapsed, verified, limited, ops)
}

// synWithToken is a SYN carrying trireme's marker option and a token frame,
// as a client's enforcer puts it on the wire.
func synWithToken(srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, frame []byte) []byte {
	ip := testenv.IPv4(src.Addr(), dst.Addr(), layers.IPProtocolTCP)
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: 4242, SYN: true, Window: 64240,
		Options: []layers.TCPOption{
			{OptionType: layers.TCPOptionKind(tokens.Option[0]), OptionLength: tokens.Option[1], OptionData: tokens.Option[2:]},
			{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{5, 0xb4}},
		}}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	return testenv.Frame(testenv.Eth(srcMAC, dstMAC, layers.EthernetTypeIPv4), ip, tcp, gopacket.Payload(frame))
}
