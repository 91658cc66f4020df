package dataplane

import (
	"testing"

	"github.com/trireme-go/trireme/identity"
)

// A relabelled client carries its new tags from its next connection on:
// app=bad is refused by the db, relabelled app=web it is let in, and the
// records name the new tags.
func TestSetTagsNewConnections(t *testing.T) {
	p := newPair(t, webDB, map[string]string{"app": "bad"}, map[string]string{"app": "db"})
	if !p.c.e.SetTags(p.c.pu, identity.NewTags(map[string]string{"app": "web"})) {
		t.Fatal("SetTags refused a live PU")
	}
	if got := p.c.pu.Tags().Map()["app"]; got != "web" {
		t.Fatalf("tags after SetTags: app=%q", got)
	}
	p.handshake()
	// The server's record of the connection names the client's new tags.
	var out Output
	p.s.e.Flush(p.now, &out)
	rs := p.s.sink.all()
	if len(rs) == 0 {
		t.Fatal("no record at the server")
	}
	found := false
	for _, tag := range rs[len(rs)-1].Remote.Tags {
		found = found || tag == "app=web"
	}
	if !found {
		t.Fatalf("server record of the relabelled client: remote tags %v", rs[len(rs)-1].Remote.Tags)
	}
	// The client's own record names its new tags as its local ones.
	p.c.e.Flush(p.now, &out)
	rc := p.c.sink.all()
	if len(rc) == 0 || len(rc[len(rc)-1].Local.Tags) != 1 || rc[len(rc)-1].Local.Tags[0] != "app=web" {
		t.Fatalf("client records after the relabel: %+v", rc)
	}
}

// A relabelled server that no policy lets in anymore loses its established
// flows at the next Reevaluate, and a removed PU cannot be relabelled.
func TestSetTagsReevaluate(t *testing.T) {
	p := newPair(t, webDB, map[string]string{"app": "web"}, map[string]string{"app": "db"})
	p.handshake()
	var out Output
	if n := p.s.e.Reevaluate(p.now, &out); n != 0 {
		t.Fatalf("revoked %d before the relabel", n)
	}
	p.s.e.SetTags(p.s.pu, identity.NewTags(map[string]string{"app": "cache"}))
	if n := p.s.e.Reevaluate(p.now, &out); n != 1 || len(out.Notes) != 1 || out.Notes[0].Kind != Revoke {
		t.Fatalf("after the relabel: revoked %d, notes %+v", n, out.Notes)
	}
	p.s.e.RemovePU(p.s.pu, p.now, &out)
	if p.s.e.SetTags(p.s.pu, identity.NewTags(map[string]string{"app": "db"})) {
		t.Fatal("SetTags accepted a removed PU")
	}
}
