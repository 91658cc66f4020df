package node

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/trireme-go/trireme/dataplane"
)

// comparable clears what parsing records besides the settings (the file's
// path, the lines of counts) so that two parses compare by settings.
func comparable(c *Config) Config {
	out := *c
	out.path, out.keys = "", nil
	for _, n := range []*Count{&out.FlowTable.Capacity, &out.PUPacketBudget.Rate, &out.PUPacketBudget.Burst} {
		n.line, n.col, n.set = 0, 0, false
	}
	out.FlowTable.PerPU.line, out.FlowTable.PerPU.col, out.FlowTable.PerPU.set = 0, 0, false
	return out
}

// TestConfigMarshalRoundTrip: every config, parsed, marshalled and parsed
// again, has the same settings; marshalling is a fixed point; and a Config
// filled in Go (as the setups do) marshals to YAML that parses to it.
func TestConfigMarshalRoundTrip(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"psk", "ca.crt", "node.crt", "node.key", "policy.yaml"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p := func(f string) string { return filepath.Join(dir, f) }
	for _, tc := range []struct{ name, yaml string }{
		{"minimal psk", "secrets: {pskFile: psk}\npolicy: policy.yaml\n"},
		{"everything set", `node: n-1
secrets: {caCert: ca.crt, nodeCert: node.crt, nodeKey: node.key}
targetNetworks: [10.0.0.0/8, "fd00::/8"]
excludedNetworks: [10.9.0.0/16]
policy: policy.yaml
flowLog: /tmp/x/flows.jsonl
flowLogMaxSize: 1MiB
flowLogFiles: 0
flowLogAggregate: 0s
socket: /tmp/x/s.sock
stateDir: /tmp/x/state
bridge: {name: br9, subnet: 10.1.2.0/24}
docker: {enabled: true, host: "unix:///tmp/x/docker.sock"}
midStream: acl
onPolicyChange: reset
tokenRefresh: 1m
kernelTCPTimeout: 90s
maxProcs: 1
flowTable: {capacity: 5000, perPU: 10%}
puPacketBudget: {rate: 0, burst: 7}
`},
		{"per-PU share as a number", "secrets: {pskFile: psk}\npolicy: policy.yaml\nflowTable: {capacity: 2000, perPU: 300}\npuPacketBudget: {rate: 500}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c1, err := ParseConfig(p("config.yaml"), []byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			b1, err := c1.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			c2, err := ParseConfig(p("config.yaml"), b1)
			if err != nil {
				t.Fatalf("marshalled config does not parse: %v\n%s", err, b1)
			}
			if a, b := comparable(c1), comparable(c2); !reflect.DeepEqual(a, b) {
				t.Fatalf("round trip changed the settings:\n%+v\n%+v\nYAML:\n%s", a, b, b1)
			}
			b2, err := c2.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if string(b1) != string(b2) {
				t.Fatalf("marshal is not a fixed point:\n%s\n---\n%s", b1, b2)
			}
		})
	}

	// Filled in Go, never defaulted: only the keys set are written.
	aggr := 0 * time.Second
	c := &Config{Node: "demo", Secrets: Secrets{PSKFile: p("psk")}, Policy: p("policy.yaml"),
		Socket: "/tmp/x/t.sock", StateDir: "/tmp/x/state", FlowLog: "/tmp/x/f.jsonl", FlowLogAggregate: &aggr,
		Bridge: Bridge{Name: "br0", Subnet: Prefix{netip.MustParsePrefix("10.0.0.0/24")}}, MidStream: MidStream{dataplane.MidStreamReset},
		TargetNetworks: Prefixes{netip.MustParsePrefix("10.0.0.0/16")}}
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, absent := range []string{"caCert", "docker", "flowTable", "puPacketBudget", "excludedNetworks", "flowLogMaxSize", "onPolicyChange"} {
		if strings.Contains(string(b), absent) {
			t.Errorf("unset %s written:\n%s", absent, b)
		}
	}
	got, err := ParseConfig(p("config.yaml"), b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	want := *c
	want.path = p("config.yaml")
	want.applyDefaults()
	if a, b := comparable(&want), comparable(got); !reflect.DeepEqual(a, b) {
		t.Fatalf("parsed back:\n%+v\nwant\n%+v", b, a)
	}
}
