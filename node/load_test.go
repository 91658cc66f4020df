package node

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// The config's networks are in the policy the resolver compiles, after the
// file's own: the daemon puts that engine in force as it is.
func TestLoadPolicyConfigNetworks(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(path, []byte("targetNetworks: [10.0.0.0/16]\nexcludedNetworks: [10.0.99.0/24]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pfx := netip.MustParsePrefix
	tests := []struct {
		name               string
		targets, excluded  Prefixes
		wantTarget, wantEx []netip.Prefix
	}{
		{"none", nil, nil, []netip.Prefix{pfx("10.0.0.0/16")}, []netip.Prefix{pfx("10.0.99.0/24")}},
		{"both", Prefixes{pfx("10.1.0.0/16")}, Prefixes{pfx("192.0.2.0/24"), pfx("198.51.100.0/24")},
			[]netip.Prefix{pfx("10.0.0.0/16"), pfx("10.1.0.0/16")},
			[]netip.Prefix{pfx("10.0.99.0/24"), pfx("192.0.2.0/24"), pfx("198.51.100.0/24")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &Config{Policy: path, TargetNetworks: tt.targets, ExcludedNetworks: tt.excluded}
			res, err := loadPolicy(cfg, quietLog())
			if err != nil {
				t.Fatal(err)
			}
			s := res.Current().Set()
			if !slices.Equal(s.TargetNetworks, tt.wantTarget) || !slices.Equal(s.ExcludedNetworks, tt.wantEx) {
				t.Fatalf("networks %v / %v, want %v / %v", s.TargetNetworks, s.ExcludedNetworks, tt.wantTarget, tt.wantEx)
			}
		})
	}
}
