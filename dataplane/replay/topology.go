package replay

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strings"

	"github.com/trireme-go/trireme/identity"
	"github.com/trireme-go/trireme/tokens"
	"gopkg.in/yaml.v3"
)

// Topology maps capture addresses to PUs and their nodes. Addresses not
// listed are external hosts.
type Topology struct {
	// TargetNetworks and ExcludedNetworks, when set, replace the policy
	// file's.
	TargetNetworks   []netip.Prefix `yaml:"-"`
	ExcludedNetworks []netip.Prefix `yaml:"-"`
	PUs              []PUSpec       `yaml:"-"`
	// WireMACs are hosts without an enforcer on the wire between the
	// enforcers (someone on the underlay, a spoofing host): a frame whose
	// source MAC is one of them reaches its receiver's enforcer without
	// passing any sender's, whatever source address it claims.
	WireMACs []net.HardwareAddr `yaml:"-"`
	// Lose makes the wire lose datagram handshake messages: the first
	// Lose[kind] messages of that kind (hello, reply, confirm, reject) sent
	// between enforcers, to replay loss and the retries it causes.
	Lose map[tokens.DatagramKind]int `yaml:"-"`
}

// PUSpec is one PU of the topology.
type PUSpec struct {
	Name string
	Node string
	IPs  []netip.Addr
	Tags identity.Tags
}

type rawTopology struct {
	TargetNetworks   []string       `yaml:"targetNetworks"`
	ExcludedNetworks []string       `yaml:"excludedNetworks"`
	WireMACs         []string       `yaml:"wireMACs"`
	Lose             map[string]int `yaml:"lose"`
	PUs              []rawPU        `yaml:"pus"`
}

type rawPU struct {
	Name string            `yaml:"name"`
	Node string            `yaml:"node"`
	IP   string            `yaml:"ip"`
	IPs  []string          `yaml:"ips"`
	Tags map[string]string `yaml:"tags"`
	line int
	col  int
}

func (r *rawPU) UnmarshalYAML(n *yaml.Node) error {
	type plain rawPU
	var p plain
	// node.Decode does not inherit the decoder's KnownFields: check keys.
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			switch k := n.Content[i]; k.Value {
			case "name", "node", "ip", "ips", "tags":
			default:
				return fmt.Errorf("line %d:%d: field %s not found in a PU (name, node, ip, ips, tags)", k.Line, k.Column, k.Value)
			}
		}
	}
	if err := n.Decode(&p); err != nil {
		return err
	}
	*r = rawPU(p)
	r.line, r.col = n.Line, n.Column
	return nil
}

// loseKinds names the handshake messages a topology's wire may lose.
var loseKinds = map[string]tokens.DatagramKind{"hello": tokens.Hello, "reply": tokens.Reply, "confirm": tokens.Confirm, "reject": tokens.Reject}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// LoadTopology reads a topology file.
func LoadTopology(path string) (*Topology, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseTopology(path, data)
}

// ParseTopology parses a topology; errors read "file:line:col: what".
func ParseTopology(file string, data []byte) (*Topology, error) {
	var raw rawTopology
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	var errs []string
	t := &Topology{}
	for _, s := range raw.TargetNetworks {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: targetNetworks: %v", file, err))
		}
		t.TargetNetworks = append(t.TargetNetworks, p.Masked())
	}
	for _, s := range raw.ExcludedNetworks {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: excludedNetworks: %v", file, err))
		}
		t.ExcludedNetworks = append(t.ExcludedNetworks, p.Masked())
	}
	for _, m := range raw.WireMACs {
		mac, err := net.ParseMAC(m)
		if err != nil || len(mac) != 6 {
			errs = append(errs, fmt.Sprintf("%s: wireMACs: %q is not an Ethernet MAC", file, m))
			continue
		}
		t.WireMACs = append(t.WireMACs, mac)
	}
	for k, n := range raw.Lose {
		kind, ok := loseKinds[k]
		if !ok || n < 0 {
			errs = append(errs, fmt.Sprintf("%s: lose: %q: %d: want hello, reply, confirm or reject and a count >= 0", file, k, n))
			continue
		}
		if t.Lose == nil {
			t.Lose = map[tokens.DatagramKind]int{}
		}
		t.Lose[kind] = n
	}
	names := map[string]bool{}
	ips := map[netip.Addr]string{}
	for i, r := range raw.PUs {
		at := fmt.Sprintf("%s:%d:%d: pus[%d]", file, r.line, r.col, i)
		if !nameRE.MatchString(r.Name) {
			errs = append(errs, at+": name: want 1-63 letters, digits, '.', '_' or '-'")
		} else if names[r.Name] {
			errs = append(errs, at+": name: "+r.Name+" given twice")
		}
		names[r.Name] = true
		node := r.Node
		if node == "" {
			node = "node-" + r.Name
		}
		spec := PUSpec{Name: r.Name, Node: node, Tags: identity.NewTags(r.Tags)}
		addrs := r.IPs
		if r.IP != "" {
			addrs = append([]string{r.IP}, addrs...)
		}
		if len(addrs) == 0 {
			errs = append(errs, at+": ip: missing")
		}
		for _, s := range addrs {
			a, err := netip.ParseAddr(s)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: ip: %v", at, err))
				continue
			}
			a = a.Unmap()
			if other, dup := ips[a]; dup {
				errs = append(errs, fmt.Sprintf("%s: ip: %v already belongs to %s", at, a, other))
			}
			ips[a] = r.Name
			spec.IPs = append(spec.IPs, a)
		}
		t.PUs = append(t.PUs, spec)
	}
	if len(errs) > 0 {
		return nil, errors.New(strings.Join(errs, "\n"))
	}
	return t, nil
}
