package k8s

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/trireme-go/trireme/ipproto"
	corev1 "k8s.io/api/core/v1"
)

// Case is one cyclonus-generated conformance case (the format of
// testdata/netpol-cases, see its README): steps, each with the full state in
// force after it and the expected reachability.
type Case struct {
	Name  string `json:"name"`
	Group string `json:"generator_group"`
	Steps []Step `json:"steps"`
}

// Step is the state after one step and its probes.
type Step struct {
	Actions    []json.RawMessage            `json:"actions"`
	Policies   []string                     `json:"policies"`
	Namespaces map[string]map[string]string `json:"namespaces"`
	Pods       map[string]CasePod           `json:"pods"`
	Probes     []Probe                      `json:"probes"`
}

// CasePod is a pod of a case step.
type CasePod struct {
	Labels map[string]string `json:"labels"`
	IP     string            `json:"ip"`
	Ports  []struct {
		Name     string `json:"name"`
		Port     int    `json:"port"`
		Protocol string `json:"protocol"`
	} `json:"ports"`
}

// Probe is one probed port and the expected tables, [from][to] by pod ID.
type Probe struct {
	Port         json.RawMessage            `json:"port"` // as probed: number or name
	Protocol     string                     `json:"protocol"`
	ResolvedPort int                        `json:"resolved_port"`
	Reachable    map[string]map[string]bool `json:"reachable"`
	Ingress      map[string]map[string]bool `json:"ingress"`
	Egress       map[string]map[string]bool `json:"egress"`
}

// ParseCase decodes a case file.
func ParseCase(data []byte) (*Case, error) {
	var c Case
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, err
	}
	if len(c.Steps) == 0 {
		return nil, errors.New("case has no steps")
	}
	return &c, nil
}

// Proto is the probe's protocol.
func (p *Probe) Proto() (ipproto.Proto, error) {
	return protocolOf(corev1.Protocol(p.Protocol))
}

// Cluster builds the universe of the step: its namespaces, pods and policies.
func (s *Step) Cluster() (*Cluster, error) {
	c := &Cluster{}
	names := make([]string, 0, len(s.Namespaces))
	for n := range s.Namespaces {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if err := c.AddNamespace(Namespace{Name: n, Labels: s.Namespaces[n]}); err != nil {
			return nil, err
		}
	}
	ids := make([]string, 0, len(s.Pods))
	for id := range s.Pods {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		cp := s.Pods[id]
		ns, name, ok := strings.Cut(id, "/")
		if !ok {
			return nil, fmt.Errorf("pod %q: want namespace/name", id)
		}
		p := Pod{Namespace: ns, Name: name, Labels: cp.Labels}
		if cp.IP != "" {
			a, err := netip.ParseAddr(cp.IP)
			if err != nil {
				return nil, fmt.Errorf("pod %s: ip: %v", id, err)
			}
			p.IPs = []netip.Addr{a}
		}
		for _, port := range cp.Ports {
			proto, err := protocolOf(corev1.Protocol(port.Protocol))
			if err != nil {
				return nil, fmt.Errorf("pod %s: port %s: %v", id, port.Name, err)
			}
			if port.Port < 1 || port.Port > 65535 {
				return nil, fmt.Errorf("pod %s: port %s: %d out of range", id, port.Name, port.Port)
			}
			p.Ports = append(p.Ports, Port{Name: port.Name, Protocol: proto, Port: uint16(port.Port)})
		}
		if err := c.AddPod(p); err != nil {
			return nil, err
		}
	}
	for i, text := range s.Policies {
		if err := c.Decode(fmt.Sprintf("policies[%d]", i), []byte(text)); err != nil {
			return nil, err
		}
	}
	return c, nil
}
