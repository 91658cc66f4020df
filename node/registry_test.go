package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/trireme-go/trireme/dataplane"
)

// regPU is a PU for the registry tests: its "namespace" is a file of dir
// (the registry tells namespaces apart by the identity of their file).
func regPU(t *testing.T, dir, id, veth, ns string) *livePU {
	t.Helper()
	var path string
	if ns != "" {
		path = filepath.Join(dir, ns)
		if _, err := os.Stat(path); err != nil {
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	steerName, _, _, _ := puNames(id)
	return &livePU{info: PUInfo{ID: id, Name: id, Veth: veth, NetNS: path}, steer: steerName, dp: new(dataplane.PU)}
}

func TestRegistry(t *testing.T) {
	type op struct {
		add, remove string // PU ID
		veth, ns    string // of the PU added
		wantErr     error  // of add
		wantFound   bool   // of remove
	}
	type lookups struct {
		ids   map[string]bool   // ID -> registered
		veths map[string]string // veth -> PU ID ("" none)
		nss   map[string]string // namespace -> PU ID ("" none)
	}
	tests := []struct {
		name string
		ops  []op
		want lookups
	}{
		{
			name: "add then look up by every key",
			ops:  []op{{add: "a", veth: "va", ns: "na"}, {add: "b", veth: "vb", ns: "nb"}},
			want: lookups{
				ids:   map[string]bool{"a": true, "b": true, "c": false},
				veths: map[string]string{"va": "a", "vb": "b", "vc": ""},
				nss:   map[string]string{"na": "a", "nb": "b", "nc": ""},
			},
		},
		{
			name: "an ID registered twice is a conflict and changes nothing",
			ops:  []op{{add: "a", veth: "va", ns: "na"}, {add: "a", veth: "vx", ns: "nx", wantErr: ErrConflict}},
			want: lookups{
				ids:   map[string]bool{"a": true},
				veths: map[string]string{"va": "a", "vx": ""},
				nss:   map[string]string{"na": "a", "nx": ""},
			},
		},
		{
			name: "remove drops every index",
			ops:  []op{{add: "a", veth: "va", ns: "na"}, {add: "b", veth: "vb", ns: "nb"}, {remove: "a", wantFound: true}},
			want: lookups{
				ids:   map[string]bool{"a": false, "b": true},
				veths: map[string]string{"va": "", "vb": "b"},
				nss:   map[string]string{"na": "", "nb": "b"},
			},
		},
		{
			name: "removing an unknown PU finds nothing",
			ops:  []op{{add: "a", veth: "va", ns: "na"}, {remove: "z"}, {remove: "a", wantFound: true}, {remove: "a"}},
			want: lookups{ids: map[string]bool{"a": false, "z": false}, veths: map[string]string{"va": ""}},
		},
		{
			// A monitor's view wins: a new PU on the veth and in the
			// namespace of an old one takes them over, and removing the
			// old one leaves the new one's indexes alone.
			name: "a veth and namespace taken over stay with the new PU",
			ops:  []op{{add: "old", veth: "v", ns: "n"}, {add: "new", veth: "v", ns: "n"}, {remove: "old", wantFound: true}},
			want: lookups{
				ids:   map[string]bool{"old": false, "new": true},
				veths: map[string]string{"v": "new"},
				nss:   map[string]string{"n": "new"},
			},
		},
		{
			name: "a PU without namespace nor veth",
			ops:  []op{{add: "a"}},
			want: lookups{ids: map[string]bool{"a": true}, veths: map[string]string{"": ""}, nss: map[string]string{"none": ""}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			r := newPURegistry()
			added := map[string]*livePU{}
			for i, o := range tt.ops {
				if o.add != "" {
					p := regPU(t, dir, o.add, o.veth, o.ns)
					err := r.add(p)
					if !errors.Is(err, o.wantErr) || (err != nil) != (o.wantErr != nil) {
						t.Fatalf("op %d: add(%s) = %v, want %v", i, o.add, err, o.wantErr)
					}
					if err == nil {
						added[o.add] = p
					}
					continue
				}
				p, found := r.remove(o.remove)
				if found != o.wantFound {
					t.Fatalf("op %d: remove(%s) found %v, want %v", i, o.remove, found, o.wantFound)
				}
				if found && p != added[o.remove] {
					t.Fatalf("op %d: remove(%s) returned another PU", i, o.remove)
				}
			}
			n := 0
			for id, want := range tt.want.ids {
				p, ok := r.get(id)
				if ok != want {
					t.Errorf("get(%s) found %v, want %v", id, ok, want)
				}
				if !ok {
					continue
				}
				n++
				if p != added[id] {
					t.Errorf("get(%s) returned another PU", id)
				}
			}
			if r.len() != n || len(r.all()) != n {
				t.Errorf("len() = %d, all() has %d, want %d", r.len(), len(r.all()), n)
			}
			for veth, want := range tt.want.veths {
				if got := idOf(r.lookupVeth(veth)); got != want {
					t.Errorf("lookupVeth(%q) = %q, want %q", veth, got, want)
				}
			}
			for ns, want := range tt.want.nss {
				if got := idOf(r.lookupNetns(filepath.Join(dir, ns))); got != want {
					t.Errorf("lookupNetns(%q) = %q, want %q", ns, got, want)
				}
			}
		})
	}
}

func idOf(p *livePU) string {
	if p == nil {
		return ""
	}
	return p.info.ID
}

// A namespace whose file is gone and whose inode number is reused by
// another is not the PU's any more.
func TestRegistryNetnsReplaced(t *testing.T) {
	dir := t.TempDir()
	r := newPURegistry()
	p := regPU(t, dir, "a", "va", "ns")
	if err := r.add(p); err != nil {
		t.Fatal(err)
	}
	if got := idOf(r.lookupNetns(p.info.NetNS)); got != "a" {
		t.Fatalf("lookupNetns = %q, want a", got)
	}
	// Same identity, other path: the registry only answers if the PU's
	// own path is still that namespace.
	other := filepath.Join(dir, "other")
	if err := os.Link(p.info.NetNS, other); err != nil {
		t.Fatal(err)
	}
	if got := idOf(r.lookupNetns(other)); got != "a" {
		t.Fatalf("lookupNetns(hard link) = %q, want a", got)
	}
	if err := os.Remove(p.info.NetNS); err != nil {
		t.Fatal(err)
	}
	if got := idOf(r.lookupNetns(other)); got != "" {
		t.Fatalf("lookupNetns after the PU's namespace went = %q, want none", got)
	}
}

func TestRegistryState(t *testing.T) {
	r := newPURegistry()
	p := regPU(t, t.TempDir(), "a", "va", "")
	p.info.State = PURunning
	if err := r.add(p); err != nil {
		t.Fatal(err)
	}
	if !r.setState("a", PUPaused) {
		t.Fatal("setState(a) did not find a")
	}
	if r.setState("z", PUPaused) {
		t.Fatal("setState(z) found an unknown PU")
	}
	var states []PUState
	r.each(func(p *livePU) { states = append(states, p.info.State) })
	if len(states) != 1 || states[0] != PUPaused {
		t.Fatalf("states = %v, want [paused]", states)
	}
}

// Adds, removes, lookups and state changes from many goroutines (run with
// -race): every PU added is found until it is removed, and the registry
// ends empty.
func TestRegistryConcurrent(t *testing.T) {
	dir := t.TempDir()
	r := newPURegistry()
	const workers, perWorker = 8, 50
	pus := make([][]*livePU, workers)
	for w := range workers {
		for i := range perWorker {
			id := fmt.Sprintf("w%d-%d", w, i)
			pus[w] = append(pus[w], regPU(t, dir, id, "v"+id, "n"+id))
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers*2)
	for w := range workers {
		wg.Go(func() {
			for _, p := range pus[w] {
				if err := r.add(p); err != nil {
					errs <- err
					return
				}
				if got, ok := r.get(p.info.ID); !ok || got != p {
					errs <- fmt.Errorf("get(%s) after add: not found", p.info.ID)
					return
				}
				if r.lookupVeth(p.info.Veth) != p || r.lookupNetns(p.info.NetNS) != p {
					errs <- fmt.Errorf("lookups of %s after add: not found", p.info.ID)
					return
				}
				r.setState(p.info.ID, PUPaused)
			}
			for _, p := range pus[w] {
				if got, ok := r.remove(p.info.ID); !ok || got != p {
					errs <- fmt.Errorf("remove(%s): not found", p.info.ID)
					return
				}
			}
		})
		// Readers, as the API and the packet path read it.
		wg.Go(func() {
			for range perWorker {
				_ = r.len()
				r.each(func(p *livePU) { _ = p.info.State })
				_ = r.all()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := r.len(); n != 0 {
		t.Fatalf("%d PUs left after every one was removed", n)
	}
}
