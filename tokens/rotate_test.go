package tokens

import (
	"errors"
	"testing"
	"time"

	"github.com/trireme-go/trireme/reason"
)

// Rotating the secrets while the engines run: a server with the new key
// refuses the client's token signed with the old one, even though it
// verified that very token before (its cache is forgotten); once the
// client has the new key too, its PU signs a new token and is let in. A
// certificate for another node, or secrets of another kind, are refused.
func TestSetSecrets(t *testing.T) {
	for _, mode := range []string{"psk", "pki"} {
		t.Run(mode, func(t *testing.T) {
			p := newPair(t, mode)
			now := base
			var cc, sc Conn
			if _, _, _, err := p.handshake(&cc, &sc, now); err != nil {
				t.Fatalf("before the rotation: %v", err)
			}
			var clientNew, serverNew Secrets
			switch mode {
			case "psk":
				clientNew, serverNew = testPSK(t, 9), testPSK(t, 9)
			case "pki":
				_, ca := cas(t)
				clientNew = pkiSecretsFor(t, ca, ca.cert, "node-a", time.Hour)
				serverNew = pkiSecretsFor(t, ca, ca.cert, "node-b", time.Hour)
			}
			if err := p.server.SetSecrets(serverNew); err != nil {
				t.Fatal(err)
			}
			now = now.Add(time.Second)
			cc, sc = Conn{}, Conn{}
			_, _, _, err := p.handshake(&cc, &sc, now)
			var code reason.Code
			if !errors.As(err, &code) {
				t.Fatalf("old client token after the server's rotation: %v, want a named refusal", err)
			}
			if err := p.client.SetSecrets(clientNew); err != nil {
				t.Fatal(err)
			}
			cc, sc = Conn{}, Conn{}
			if _, _, _, err := p.handshake(&cc, &sc, now); err != nil {
				t.Fatalf("both rotated: %v", err)
			}
			// Refused replacements leave the secrets in force.
			var other Secrets
			if mode == "psk" {
				ca, _ := cas(t)
				other = pkiSecretsFor(t, ca, ca.cert, "node-a", time.Hour)
			} else {
				other = testPSK(t, 3)
			}
			if err := p.client.SetSecrets(other); err == nil {
				t.Error("secrets of another kind accepted")
			}
			if mode == "pki" {
				_, ca := cas(t)
				if err := p.client.SetSecrets(pkiSecretsFor(t, ca, ca.cert, "node-x", time.Hour)); err == nil {
					t.Error("a certificate for another node accepted")
				}
			}
			cc, sc = Conn{}, Conn{}
			if _, _, _, err := p.handshake(&cc, &sc, now); err != nil {
				t.Fatalf("after refused replacements: %v", err)
			}
		})
	}
}
