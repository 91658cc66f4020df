package tokens

import (
	"crypto/ecdsa"
	"crypto/x509"
	"sync"
	"testing"
	"time"

	"github.com/trireme-go/trireme/identity"
)

// base is the tests' clock origin: certificates are made valid around the
// wall clock (NewPKI checks its own certificate against it), and every
// engine call gets an explicit time derived from base.
var base = time.Now().Truncate(time.Second)

var (
	clientTags = identity.Tags{
		{Key: "@sys:image", Value: "registry.example/shop/web:1.4"},
		{Key: "@sys:name", Value: "web-7d9f"},
		{Key: "app", Value: "web"},
		{Key: "env", Value: "prod"},
	}
	serverTags = identity.Tags{
		{Key: "@sys:image", Value: "registry.example/shop/db:16"},
		{Key: "app", Value: "db"},
		{Key: "env", Value: "prod"},
	}
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

var (
	caOnce     sync.Once
	sharedCA   testCA
	otherCAVal testCA
)

// cas returns the deployment CA and an unrelated CA, made once per process.
func cas(t testing.TB) (testCA, testCA) {
	caOnce.Do(func() {
		c, k, err := NewCA("trireme test CA", base, 24*time.Hour)
		if err != nil {
			panic(err)
		}
		sharedCA = testCA{c, k}
		c, k, err = NewCA("rogue CA", base, 24*time.Hour)
		if err != nil {
			panic(err)
		}
		otherCAVal = testCA{c, k}
	})
	return sharedCA, otherCAVal
}

func pkiSecretsFor(t testing.TB, ca testCA, trust *x509.Certificate, node string, validity time.Duration) Secrets {
	t.Helper()
	cert, key, err := IssueNode(ca.cert, ca.key, node, base, validity)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewPKI(trust, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testPSK(t testing.TB, b byte) Secrets {
	t.Helper()
	k := make([]byte, 32)
	for i := range k {
		k[i] = b + byte(i)
	}
	s, err := NewPSK(k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func engine(t testing.TB, node string, s Secrets) *Engine {
	t.Helper()
	e, err := New(Config{Node: node, Secrets: s})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// pair is a client node and a server node with one PU each.
type pair struct {
	client, server *Engine
	cl, sl         *Local
}

func newPair(t testing.TB, mode string) pair {
	t.Helper()
	var cs, ss Secrets
	switch mode {
	case "psk":
		cs, ss = testPSK(t, 1), testPSK(t, 1)
	case "pki":
		ca, _ := cas(t)
		cs = pkiSecretsFor(t, ca, ca.cert, "node-a", time.Hour)
		ss = pkiSecretsFor(t, ca, ca.cert, "node-b", time.Hour)
	default:
		t.Fatalf("mode %q", mode)
	}
	p := pair{client: engine(t, "node-a", cs), server: engine(t, "node-b", ss)}
	p.cl = p.client.NewLocal(clientTags)
	p.sl = p.server.NewLocal(serverTags)
	return p
}

// frames of one handshake.
type frames struct{ syn, synack, ack []byte }

// handshake runs the three messages between p's PUs at now and returns the
// server's identity as seen by the client, the client's as seen by the
// server, and the frames.
func (p pair) handshake(cc, sc *Conn, now time.Time) (server, client *Peer, fr frames, err error) {
	if fr.syn, err = p.client.AppendSYN(nil, p.cl, cc, now); err != nil {
		return
	}
	if client, err = p.server.VerifySYN(fr.syn, sc, now); err != nil {
		return
	}
	if fr.synack, err = p.server.AppendSYNACK(nil, p.sl, sc, now); err != nil {
		return
	}
	if server, err = p.client.VerifySYNACK(fr.synack, cc, now); err != nil {
		return
	}
	if fr.ack, err = p.client.AppendACK(nil, cc); err != nil {
		return
	}
	err = p.server.VerifyACK(fr.ack, sc)
	return
}
