package policy

import (
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/ipproto"
)

// settleSymbols collects garbage until the symbol table stops shrinking
// (cleanups run asynchronously after a collection) and returns its stats.
func settleSymbols() (live, span int) {
	live, span = identity.SymbolStats()
	for stable, i := 0, 0; stable < 3 && i < 500; i++ {
		runtime.GC()
		time.Sleep(2 * time.Millisecond)
		l, s := identity.SymbolStats()
		if l < live {
			stable = 0
		} else {
			stable++
		}
		live, span = l, s
	}
	return live, span
}

// TestSymbolTableBounded: identities and engines that are gone release
// their symbols, numbers are reused, and what is still held keeps deciding
// right across the churn and a policy swap.
func TestSymbolTableBounded(t *testing.T) {
	src := `policies:
  - name: web
    selector: '@sys:name=/web-1'
    ingress:
      - from: [{selector: '@sys:image="registry.local:5000/team/nginx:1.25"'}]
        action: allow
`
	compile := func(extra string) *Engine {
		s, err := Parse("f.yaml", []byte(src+extra))
		if err != nil {
			t.Fatal(err)
		}
		e, err := Compile(s)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := compile("")
	client := identity.New(identity.Tags{{Key: "@sys:image", Value: "registry.local:5000/team/nginx:1.25"}, {Key: "@sys:name", Value: "/client-held"}})
	baseLive, baseSpan := settleSymbols()
	const rounds, perRound = 4, 5000
	for r := 0; r < rounds; r++ {
		for i := 0; i < perRound; i++ {
			identity.New(identity.Tags{{Key: "@sys:id", Value: fmt.Sprintf("%064x", r*perRound+i)}, {Key: "@sys:name", Value: fmt.Sprintf("/c-%d-%d", r, i)}})
		}
		// A policy swap whose selectors name values of their own.
		e = compile(fmt.Sprintf("  - name: other\n    selector: '@sys:name in (/o-%d-a, /o-%d-b)'\n    egress: [{to: [{selector: '@sys:id=x%d'}], action: allow}]\n", r, r, r))
		e.ForPU(identity.Tags{{Key: "@sys:name", Value: fmt.Sprintf("/o-%d-a", r)}})
		live, span := settleSymbols()
		if live > baseLive+64 {
			t.Fatalf("round %d: %d symbols live, %d before the churn", r, live, baseLive)
		}
		// Numbers are reused: the span grows by at most one round's worth.
		if span > baseSpan+3*perRound {
			t.Fatalf("round %d: symbol span %d, %d before the churn", r, span, baseSpan)
		}
	}
	addr := netip.MustParseAddr("10.0.0.1")
	pu := e.ForPU(identity.Tags{{Key: "@sys:name", Value: "/web-1"}})
	for _, c := range []struct {
		peer *identity.Identity
		want Action
	}{
		{client, Allow}, // prepared before the churn and the swaps
		{identity.New(identity.Tags{{Key: "@sys:image", Value: "registry.local:5000/team/nginx:1.25"}, {Key: "@sys:name", Value: "/c-0-1"}}), Allow},
		{identity.New(identity.Tags{{Key: "@sys:image", Value: "registry.local:5000/team/nginx:1.26"}, {Key: "@sys:name", Value: "/c-0-2"}}), Deny},
		{identity.New(identity.Tags{{Key: "@sys:id", Value: fmt.Sprintf("%064x", 7)}}), Deny},
	} {
		if d := pu.Ingress(c.peer, addr, ipproto.TCP, 80); d.Action != c.want {
			t.Errorf("%v: %v, want %v", c.peer.Tags(), d.Action, c.want)
		}
	}
	runtime.KeepAlive(client)
}

// TestSymbolsReleasedWithHolders: the symbols of an Identity, an Engine and
// a PUPolicy go when the last of them does, not before.
func TestSymbolsReleasedWithHolders(t *testing.T) {
	held := identity.Interned
	settleSymbols()
	id := identity.New(identity.Tags{{Key: "held-key-1", Value: "held-value-1"}})
	sel, err := ParseSelector(`held-key-2="held value 2"`)
	if err != nil {
		t.Fatal(err)
	}
	peer, err := ParseSelector(`held-key-3=held-value-3`)
	if err != nil {
		t.Fatal(err)
	}
	e, err := Compile(&Set{Policies: []Policy{{Name: "p", Selector: sel, Ingress: []Rule{{Action: Allow, Peers: []Peer{{Selector: peer}}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	pu := e.ForPU(identity.Tags{{Key: "held-key-2", Value: "held value 2"}})
	if len(pu.Policies()) != 1 {
		t.Fatal("not selected")
	}
	e = nil
	settleSymbols()
	for _, s := range []string{"held-key-1", "held-value-1", "held-key-3", "held-value-3"} {
		if !held(s) {
			t.Errorf("%q released while held", s)
		}
	}
	if held("held-key-2") || held("held value 2") {
		t.Error("engine's symbols not released with the engine")
	}
	if d := pu.Ingress(identity.New(identity.Tags{{Key: "held-key-3", Value: "held-value-3"}}), netip.Addr{}, ipproto.TCP, 1); d.Action != Allow {
		t.Errorf("decision after the engine went: %v", d.Action)
	}
	runtime.KeepAlive(id)
	id, pu = nil, nil
	settleSymbols()
	for _, s := range []string{"held-key-1", "held-value-1", "held-key-3", "held-value-3"} {
		if held(s) {
			t.Errorf("%q still held", s)
		}
	}
}

// TestSymbolsConcurrentChurn: decisions stay right while other goroutines
// create and drop identities and engines with new strings, and the
// collector releases and reuses their symbols (run with -race).
func TestSymbolsConcurrentChurn(t *testing.T) {
	s, err := Load("../examples/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e, err := Compile(s)
	if err != nil {
		t.Fatal(err)
	}
	web := e.ForPU(tags("app=web", "env=prod"))
	fe := identity.New(tags("app=frontend"))
	stop := make(chan struct{})
	var churners sync.WaitGroup
	for g := 0; g < 2; g++ {
		churners.Add(1)
		go func(g int) {
			defer churners.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				identity.New(tags(fmt.Sprintf("k%d=v-%d-%d", i%5, g, i), "app=frontend"))
				if i%500 == 0 {
					sel, _ := ParseSelector(fmt.Sprintf("app=x-%d-%d", g, i))
					if _, err := Compile(&Set{Policies: []Policy{{Name: "p", Selector: sel}}}); err != nil {
						t.Error(err)
						return
					}
					runtime.GC()
				}
			}
		}(g)
	}
	var deciders sync.WaitGroup
	for g := 0; g < 4; g++ {
		deciders.Add(1)
		go func(g int) {
			defer deciders.Done()
			for i := 0; i < 3000; i++ {
				peer := fe
				if i%2 == 1 {
					peer = identity.New(tags("app=frontend", fmt.Sprintf("d=%d-%d", g, i)))
				}
				if d := web.Ingress(peer, netip.Addr{}, ipproto.TCP, 80); d.Action != Allow {
					t.Errorf("frontend -> web:80 = %v", d.Action)
					return
				}
				if d := web.Ingress(identity.New(tags("app=db", fmt.Sprintf("d=%d-%d", g, i))), netip.Addr{}, ipproto.TCP, 80); d.Action == Allow {
					t.Errorf("db -> web:80 allowed")
					return
				}
			}
		}(g)
	}
	deciders.Wait()
	close(stop)
	churners.Wait()
}
