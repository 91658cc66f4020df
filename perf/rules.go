package perf

import (
	"fmt"
	"net/netip"

	"gopkg.in/yaml.v3"
)

// MinRules is the smallest policy RulesPolicy builds: the two rules that
// let the perf client reach the perf server.
const MinRules = 2

// RulesPolicy returns a policy of n rules in force on the measured flow's
// two PUs: the two of AllowPerfPolicy that allow it (the perf server's
// ingress from the perf client, the client's egress to the server), each
// written after n-2 rules that do not match it, split evenly between the
// two PUs so that each enforcer has about n/2 rules to go through. The
// fillers cycle through four shapes, half rejects and half allows, so that
// neither the port index nor the peer index alone rules them out:
//
//   - ingress, port: the measured port, from "app=perf-client, shard=fN" (a
//     label the client lacks); reject
//   - ingress, from app=perf-client, port: another TCP port; allow
//   - egress, port: the measured port, to a /32 outside the target networks;
//     reject
//   - egress, port: the measured port, to "app=perf-server, shard=fN"; allow
func RulesPolicy(n int, port uint16) (string, error) {
	if n < MinRules {
		return "", fmt.Errorf("perf: a policy for the perf client and server has at least %d rules, not %d", MinRules, n)
	}
	type peer struct {
		Selector string `yaml:"selector,omitempty"`
		CIDR     string `yaml:"cidr,omitempty"`
	}
	type rule struct {
		Name   string   `yaml:"name"`
		From   []peer   `yaml:"from,omitempty"`
		To     []peer   `yaml:"to,omitempty"`
		Ports  []string `yaml:"ports,omitempty"`
		Action string   `yaml:"action"`
	}
	type pol struct {
		Name     string `yaml:"name"`
		Selector string `yaml:"selector"`
		Ingress  []rule `yaml:"ingress,omitempty"`
		Egress   []rule `yaml:"egress,omitempty"`
	}
	measured := fmt.Sprintf("tcp/%d", port)
	server := pol{Name: "perf-server", Selector: "app=perf-server"}
	client := pol{Name: "perf-client", Selector: "app=perf-client"}
	for i := range n - MinRules {
		name := fmt.Sprintf("filler-%d", i)
		switch i % 4 {
		case 0:
			server.Ingress = append(server.Ingress, rule{Name: name, Ports: []string{measured}, Action: "reject",
				From: []peer{{Selector: fmt.Sprintf("app=perf-client, shard=f%d", i)}}})
		case 1:
			server.Ingress = append(server.Ingress, rule{Name: name, Ports: []string{fmt.Sprintf("tcp/%d", otherPort(i, port))}, Action: "allow",
				From: []peer{{Selector: "app=perf-client"}}})
		case 2:
			a := netip.AddrFrom4([4]byte{172, 16 + byte(i>>16&0x0f), byte(i >> 8), byte(i)})
			client.Egress = append(client.Egress, rule{Name: name, Ports: []string{measured}, Action: "reject",
				To: []peer{{CIDR: netip.PrefixFrom(a, 32).String()}}})
		case 3:
			client.Egress = append(client.Egress, rule{Name: name, Ports: []string{measured}, Action: "allow",
				To: []peer{{Selector: fmt.Sprintf("app=perf-server, shard=f%d", i)}}})
		}
	}
	server.Ingress = append(server.Ingress, rule{Name: "from-perf-client", Action: "allow", From: []peer{{Selector: "app=perf-client"}}})
	client.Egress = append(client.Egress, rule{Name: "to-perf-server", Action: "allow", To: []peer{{Selector: "app=perf-server"}}})
	b, err := yaml.Marshal(map[string][]pol{"policies": {server, client}})
	return string(b), err
}

// otherPort is a TCP port for filler i that is neither the measured port
// nor the one after it (iperf3's).
func otherPort(i int, port uint16) uint16 {
	p := uint16(20000 + i%40000)
	if p == port || p == port+1 {
		p += 2
	}
	return p
}
