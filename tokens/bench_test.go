package tokens

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// cpuClock reports the CPU time the benchmark's own thread spent per
// operation ("cpu-ns/op"), beside the wall-clock ns/op: on a shared machine
// the wall clock also counts time spent waiting for a core.
type cpuClock struct{ start, paused int64 }

func (c *cpuClock) pause(b *testing.B)  { c.paused = threadCPU(b) }
func (c *cpuClock) resume(b *testing.B) { c.start += threadCPU(b) - c.paused }

func startCPUClock(b *testing.B) *cpuClock {
	runtime.LockOSThread()
	b.Cleanup(runtime.UnlockOSThread)
	return &cpuClock{start: threadCPU(b)}
}

func (c *cpuClock) report(b *testing.B) {
	b.ReportMetric(float64(threadCPU(b)-c.start)/float64(b.N), "cpu-ns/op")
}

func threadCPU(b *testing.B) int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		b.Fatal(err)
	}
	return ts.Nano()
}

// BenchmarkHandshake measures one whole handshake, both ends, all three
// messages: AppendSYN, VerifySYN, AppendSYNACK, VerifySYNACK, AppendACK,
// VerifyACK.
//
//   - warm: both PUs' tokens and their ECDH result are cached (every
//     connection after the first between two PUs in an epoch).
//   - cold: every cache of both engines is emptied before each handshake (the
//     first connection ever between two nodes).
//   - cold-known-node (PKI): the token and ECDH caches are emptied, the
//     verified node certificates are kept (the first connection between two
//     PUs in an epoch, between nodes that met before).
//   - same-node-cold: both PUs on one node (one engine), their ECDH result
//     forgotten before each handshake (the first connection between the two
//     PUs in an epoch; the engine knows its own PUs' tokens).
//
// The PUs' tokens are signed already (once per PU per epoch, see
// BenchmarkNewEpoch).
func BenchmarkHandshake(b *testing.B) {
	for _, v := range []struct{ mode, cache string }{
		{"psk", "warm"}, {"psk", "cold"}, {"pki", "warm"}, {"pki", "cold"}, {"pki", "cold-known-node"},
		{"pki", "same-node-cold"},
	} {
		b.Run(v.mode+"/"+v.cache, func(b *testing.B) {
			p := newPair(b, v.mode)
			// The crypto is measured, not the verification budget (the
			// clock stands still: it would never refill).
			p.server = engineWith(b, p.server, VerifyBudget{SourceRate: -1, NodeRate: -1})
			p.sl = p.server.NewLocal(serverTags)
			if v.cache == "same-node-cold" {
				p.client, p.cl = p.server, p.server.NewLocal(clientTags)
			}
			var cc, sc Conn
			if _, _, _, err := p.handshake(&cc, &sc, base); err != nil {
				b.Fatal(err)
			}
			syn := make([]byte, 0, MaxFrame)
			synack := make([]byte, 0, MaxFrame)
			ack := make([]byte, 0, 64)
			b.ReportAllocs()
			clock := startCPUClock(b)
			for b.Loop() {
				if v.cache != "warm" {
					clock.pause(b) // StopTimer itself stops the world
					b.StopTimer()
					for _, e := range []*Engine{p.client, p.server} {
						if v.cache == "same-node-cold" {
							e.shared.reset()
							continue
						}
						e.tokens.reset()
						e.shared.reset()
						if v.cache == "cold" {
							e.certs.reset()
						}
					}
					b.StartTimer()
					clock.resume(b)
				}
				var cc, sc Conn
				var err error
				syn, _ = p.client.AppendSYN(syn[:0], p.cl, &cc, base)
				if _, err = p.server.VerifySYN(syn, &sc, base); err != nil {
					b.Fatal(err)
				}
				synack, _ = p.server.AppendSYNACK(synack[:0], p.sl, &sc, base)
				if _, err = p.client.VerifySYNACK(synack, &cc, base); err != nil {
					b.Fatal(err)
				}
				ack, _ = p.client.AppendACK(ack[:0], &cc)
				if err = p.server.VerifyACK(ack, &sc); err != nil {
					b.Fatal(err)
				}
			}
			clock.report(b)
		})
	}
}

// BenchmarkNewEpoch measures making a PU's identity token: ephemeral key
// generation (PKI) and signing, once per PU per Refresh.
func BenchmarkNewEpoch(b *testing.B) {
	for _, mode := range []string{"psk", "pki"} {
		b.Run(mode, func(b *testing.B) {
			p := newPair(b, mode)
			b.ReportAllocs()
			clock := startCPUClock(b)
			for b.Loop() {
				if _, err := p.client.newEpoch(clientTags, base); err != nil {
					b.Fatal(err)
				}
			}
			clock.report(b)
		})
	}
}

// BenchmarkVerifySYNWarm measures the server's per-SYN cost with a cached
// token.
func BenchmarkVerifySYNWarm(b *testing.B) {
	p := newPair(b, "pki")
	var c Conn
	syn, _ := p.client.AppendSYN(nil, p.cl, &c, base)
	b.ReportAllocs()
	clock := startCPUClock(b)
	for b.Loop() {
		var s Conn
		if _, err := p.server.VerifySYN(syn, &s, base); err != nil {
			b.Fatal(err)
		}
	}
	clock.report(b)
}

// BenchmarkP256 measures the public-key operations a cold PKI handshake is
// made of (4 ECDSA verifications, 2 ECDH), on the same machine, for scale.
func BenchmarkP256(b *testing.B) {
	b.Run("ecdsa-verify", func(b *testing.B) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		h := sha256.Sum256([]byte("trireme"))
		sig, _ := ecdsa.SignASN1(rand.Reader, k, h[:])
		clock := startCPUClock(b)
		for b.Loop() {
			if !ecdsa.VerifyASN1(&k.PublicKey, h[:], sig) {
				b.Fatal("verify")
			}
		}
		clock.report(b)
	})
	b.Run("ecdh", func(b *testing.B) {
		k1, _ := ecdh.P256().GenerateKey(rand.Reader)
		k2, _ := ecdh.P256().GenerateKey(rand.Reader)
		clock := startCPUClock(b)
		for b.Loop() {
			if _, err := k1.ECDH(k2.PublicKey()); err != nil {
				b.Fatal(err)
			}
		}
		clock.report(b)
	})
}
