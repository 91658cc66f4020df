package attacks

import (
	"io"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/trireme-go/trireme/testenv"
)

// TestUnderlayForgedFIN: an attacker on the underlay who knows a
// connection's 4-tuple (not its sequence numbers) sends a FIN spoofing the
// server. frontend's TCP ignores it (outside its window), and so must its
// enforcer: before, it counted the FIN, so that frontend's own FIN (a
// half-close: frontend still waits for the answer) took the flow out of the
// kernel and ended it 5 s later, and the server's late answer was dropped.
// The flow ends when the real FINs have been exchanged.
func TestUnderlayForgedFIN(t *testing.T) {
	// The underlay scene (underlay_test.go), with a server of its own on
	// web:8080: it reads the request to its end, answers 7 s later (after
	// a closing flow would have expired), then closes.
	c := testenv.NewCluster(t, 2, 1)
	ca := testenv.CADir(t)
	frontend, web := c.Nodes[0].PUs[0], c.Nodes[1].PUs[0]
	d0 := testenv.NewDaemon(t, c.Nodes[0], testenv.DaemonOptions{PKI: true, SecretsDir: ca, Policy: underlayPolicy})
	d1 := testenv.NewDaemon(t, c.Nodes[1], testenv.DaemonOptions{PKI: true, SecretsDir: ca, Policy: underlayPolicy})
	d0.Start()
	d1.Start()
	d0.Attach(frontend, "app=frontend")
	d1.Attach(web, "app=web")
	raw := c.AddUnderlayHost(t).Raw()
	srv := netip.AddrPortFrom(web.Addr, 8080)
	late := web.ListenOn(web.Addr, 8080)
	t.Cleanup(func() { late.Close() })
	go func() {
		sc, err := late.Accept()
		if err != nil {
			return
		}
		defer sc.Close()
		_ = sc.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadAll(sc); err != nil {
			return
		}
		time.Sleep(7 * time.Second)
		_, _ = sc.Write([]byte("late answer"))
	}()

	conn, err := frontend.Dial(srv, 3*time.Second)
	if err != nil {
		t.Fatalf("frontend -> web:8080 (allowed): %v", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddrPort(conn.LocalAddr().String())

	// The forged FIN, web -> frontend, toward node 0; the enforcer must
	// have seen it before frontend closes its side: steered (packets), or,
	// the flow being in the kernel, passed and logged to the daemon
	// (logged-ends), judged the same way.
	seen := func() uint64 { c := countersOf(t, d0); return c["packets"] + c["logged-ends"] }
	before := seen()
	fin := seg{src: srv, dst: client, flags: "FA", seq: mrand.Uint32(), ack: mrand.Uint32()}
	fin.srcMAC, fin.dstMAC = raw.MAC, c.Nodes[0].UplinkMAC()
	deadline := time.Now().Add(5 * time.Second)
	for seen() == before {
		raw.MustSend(fin.frame())
		if time.Now().After(deadline) {
			t.Fatal("the forged FIN never reached frontend's enforcer")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(conn)
	if string(got) != "late answer" {
		t.Fatalf("frontend read %q (%v) after its half-close, want the late answer: the forged FIN ended the flow", got, err)
	}
}
