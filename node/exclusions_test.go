package node

import (
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
)

// memSet is the kernel's excluded set as a set of prefixes: adding one that
// is in it, or removing one that is not, is an error (as nftables says
// for an element that exists or does not).
type memSet map[netip.Prefix]bool

func (s memSet) AddExcluded(p netip.Prefix) error {
	if s[p] {
		return errors.New("exists: " + p.String())
	}
	s[p] = true
	return nil
}

func (s memSet) RemoveExcluded(p netip.Prefix) error {
	if !s[p] {
		return errors.New("no such element: " + p.String())
	}
	delete(s, p)
	return nil
}

// The kernel's set is always the union of the policy's and the runtime
// exclusions, whatever the order of the changes; only the runtime ones are
// saved.
func TestExclusions(t *testing.T) {
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	type step struct {
		op      string // add, remove, policy
		prefix  []netip.Prefix
		wantErr error // of add/remove (ErrNotFound)
	}
	tests := []struct {
		name        string
		policy      []netip.Prefix // before open
		runtime     []netip.Prefix // from the state
		steps       []step
		wantRuntime []netip.Prefix
	}{
		{
			name: "runtime add and remove", policy: pfx("10.9.0.0/16"),
			steps:       []step{{op: "add", prefix: pfx("192.0.2.0/24")}, {op: "add", prefix: pfx("198.51.100.7/32")}, {op: "remove", prefix: pfx("192.0.2.0/24")}},
			wantRuntime: pfx("198.51.100.7/32"),
		},
		{
			name:        "adding twice is no error",
			steps:       []step{{op: "add", prefix: pfx("192.0.2.0/24")}, {op: "add", prefix: pfx("192.0.2.0/24")}},
			wantRuntime: pfx("192.0.2.0/24"),
		},
		{
			name:  "removing one never added is not found",
			steps: []step{{op: "remove", prefix: pfx("192.0.2.0/24"), wantErr: ErrNotFound}},
		},
		{
			name: "a policy network cannot be removed at runtime", policy: pfx("10.9.0.0/16"),
			steps: []step{{op: "remove", prefix: pfx("10.9.0.0/16"), wantErr: ErrNotFound}},
		},
		{
			// In both: removing it from one keeps it in the kernel.
			name: "a network of the policy added at runtime too", policy: pfx("10.9.0.0/16"),
			steps: []step{{op: "add", prefix: pfx("10.9.0.0/16")}, {op: "remove", prefix: pfx("10.9.0.0/16")},
				{op: "add", prefix: pfx("10.9.0.0/16")}, {op: "policy", prefix: nil}},
			wantRuntime: pfx("10.9.0.0/16"),
		},
		{
			name: "a new policy replaces the policy's networks, the runtime ones stay", policy: pfx("10.9.0.0/16", "10.8.0.0/16"), runtime: pfx("192.0.2.0/24"),
			steps:       []step{{op: "policy", prefix: pfx("10.8.0.0/16", "192.0.2.0/24", "10.7.0.0/16")}, {op: "policy", prefix: pfx("10.6.0.0/16")}},
			wantRuntime: pfx("192.0.2.0/24"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var saved []netip.Prefix
			x := exclusions{log: slog.New(slog.NewTextHandler(io.Discard, nil)), save: func(ps []netip.Prefix) { saved = slices.Clone(ps) }}
			x.setPolicy(tt.policy)
			x.setRuntime(tt.runtime)
			kernel := memSet{}
			x.open(kernel)
			for _, p := range x.all() {
				kernel[p] = true // steer.Apply
			}
			policy := tt.policy
			for i, s := range tt.steps {
				var err error
				switch s.op {
				case "add":
					err = x.add(s.prefix[0])
				case "remove":
					err = x.remove(s.prefix[0])
				case "policy":
					x.setPolicy(s.prefix)
					policy = s.prefix
				}
				if !errors.Is(err, s.wantErr) || (err == nil) != (s.wantErr == nil) {
					t.Fatalf("step %d: %s %v = %v, want %v", i, s.op, s.prefix, err, s.wantErr)
				}
				want := map[netip.Prefix]bool{}
				for _, p := range append(slices.Clone(policy), x.runtimeList()...) {
					want[p] = true
				}
				if !sameSet(kernel, want) {
					t.Fatalf("step %d: kernel set %v, want %v", i, kernel, want)
				}
				for _, p := range policy {
					if !x.covers(p.Addr()) {
						t.Errorf("step %d: %s not covered", i, p)
					}
				}
			}
			if got := x.runtimeList(); !slices.Equal(got, tt.wantRuntime) {
				t.Errorf("runtime = %v, want %v", got, tt.wantRuntime)
			}
			if len(tt.steps) > 0 && slices.ContainsFunc(tt.steps, func(s step) bool { return s.op != "policy" && s.wantErr == nil }) && !slices.Equal(saved, tt.wantRuntime) {
				t.Errorf("saved = %v, want %v", saved, tt.wantRuntime)
			}
		})
	}
}

func sameSet(a memSet, b map[netip.Prefix]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for p := range a {
		if !b[p] {
			return false
		}
	}
	return true
}
