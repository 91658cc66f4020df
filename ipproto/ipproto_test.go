package ipproto

import (
	"encoding/json"
	"testing"
)

func TestText(t *testing.T) {
	for _, c := range []struct {
		p     Proto
		text  string
		named bool
		ports bool
	}{
		{Any, "any", true, false},
		{ICMP, "icmp", true, false},
		{TCP, "tcp", true, true},
		{UDP, "udp", true, true},
		{ICMPv6, "icmpv6", true, false},
		{SCTP, "sctp", true, false},
		{47, "ip-47", false, false},
		{255, "ip-255", false, false},
		{2, "ip-2", false, false},
	} {
		if got := c.p.String(); got != c.text {
			t.Errorf("%d.String() = %q, want %q", uint8(c.p), got, c.text)
		}
		if c.p.Named() != c.named || c.p.HasPorts() != c.ports {
			t.Errorf("%v: Named %v HasPorts %v", c.p, c.p.Named(), c.p.HasPorts())
		}
		var back Proto
		if err := back.UnmarshalText([]byte(c.text)); err != nil || back != c.p {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v", c.text, back, err, c.p)
		}
	}
}

func TestUnmarshalText(t *testing.T) {
	for text, want := range map[string]Proto{"TCP": TCP, "Udp": UDP, "ip-0": Any, "IP-6": TCP, "ip-006": TCP} {
		var p Proto
		if err := p.UnmarshalText([]byte(text)); err != nil || p != want {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v", text, p, err, want)
		}
	}
	for _, text := range []string{"", "ip-", "ip-256", "ip--1", "ip-+6", "ip-0x6", "6", "gre", " tcp", "tcp/80"} {
		p := Proto(99)
		if err := p.UnmarshalText([]byte(text)); err == nil {
			t.Errorf("UnmarshalText(%q) = %v, want an error", text, p)
		} else if p != 99 {
			t.Errorf("UnmarshalText(%q) changed the value on error", text)
		}
	}
}

// In JSON, a protocol is its name (flow records, the API).
func TestJSON(t *testing.T) {
	b, err := json.Marshal(struct{ P, Q Proto }{TCP, 47})
	if err != nil || string(b) != `{"P":"tcp","Q":"ip-47"}` {
		t.Fatalf("Marshal = %s, %v", b, err)
	}
	var v struct{ P, Q Proto }
	if err := json.Unmarshal(b, &v); err != nil || v.P != TCP || v.Q != 47 {
		t.Fatalf("Unmarshal = %+v, %v", v, err)
	}
}

// Any text either parses to a protocol whose text parses back to it, or is
// refused; never a panic.
func FuzzUnmarshalText(f *testing.F) {
	for _, s := range []string{"tcp", "ip-47", "ip-256", "ICMPv6", "", "ip-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var p Proto
		if p.UnmarshalText([]byte(s)) != nil {
			return
		}
		var back Proto
		if err := back.UnmarshalText([]byte(p.String())); err != nil || back != p {
			t.Fatalf("%q -> %v -> %v, %v", s, p, back, err)
		}
	})
}
