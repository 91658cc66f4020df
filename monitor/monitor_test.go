package monitor

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/trireme-go/trireme/identity"
)

func TestBuildTags(t *testing.T) {
	tests := []struct {
		name   string
		labels map[string]string
		sys    map[string]string
		want   string
	}{
		{"labels and sys", map[string]string{"app": "web", "env": "prod"}, SysTags(KindDocker, "abc", "web1", "img:1"),
			"@sys:id=abc,@sys:image=img:1,@sys:kind=docker,@sys:name=web1,app=web,env=prod"},
		{"reserved labels dropped", map[string]string{"@sys:name": "db", "@ns:x": "y", "app": "web"}, SysTags(KindNetns, "n1", "n1", ""),
			"@sys:id=n1,@sys:kind=netns,@sys:name=n1,app=web"},
		{"empty key dropped", map[string]string{"": "x", " ": "y", "k": ""}, nil, "k="},
		{"key with = dropped", map[string]string{"a=b": "c", "a": "b=c"}, nil, "a=b=c"},
		{"no labels", nil, SysTags(KindProcess, "p", "p", ""), "@sys:id=p,@sys:kind=process,@sys:name=p"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := BuildTags(nil, "pu", tc.labels, tc.sys)
			if err := got.Validate(); err != nil {
				t.Fatalf("tags invalid: %v", err)
			}
			if got.String() != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestEnforceable(t *testing.T) {
	tests := []struct {
		pu   PU
		want bool
		why  string
	}{
		{PU{Network: NetworkBridge, HostVeth: "veth1"}, true, ""},
		{PU{Network: NetworkBridge}, false, "no host-side veth"},
		{PU{Network: NetworkHost}, false, "host network"},
		{PU{Network: NetworkNone}, false, "no network"},
		{PU{Network: NetworkContainer, SharesWith: "abc"}, false, "container abc"},
		{PU{}, false, "not running"},
	}
	for _, tc := range tests {
		ok, why := tc.pu.Enforceable()
		if ok != tc.want || !strings.Contains(why, tc.why) {
			t.Errorf("%v: got %v %q, want %v %q", tc.pu.Network, ok, why, tc.want, tc.why)
		}
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// testNetns makes a named namespace; with addr, a veth pair (host side
// returned) with addr on the namespace's eth0.
func testNetns(t *testing.T, tag, addr, bridge string) (name, hostVeth string) {
	t.Helper()
	name = fmt.Sprintf("trmon-%s-%d", tag, os.Getpid())
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	if addr == "" {
		return name, ""
	}
	hostVeth = fmt.Sprintf("trm%s%d", tag, os.Getpid()%100000)
	run(t, "ip", "link", "add", hostVeth, "type", "veth", "peer", "name", "eth0", "netns", name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", hostVeth).Run() })
	if bridge != "" {
		run(t, "ip", "link", "set", hostVeth, "master", bridge)
	}
	run(t, "ip", "-n", name, "addr", "add", addr, "dev", "eth0")
	run(t, "ip", "-n", name, "link", "set", "eth0", "up")
	run(t, "ip", "link", "set", hostVeth, "up")
	return name, hostVeth
}

func recv(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	return Event{}
}

func TestSourceAttachDetach(t *testing.T) {
	needRoot(t)
	br := fmt.Sprintf("trmbr%d", os.Getpid()%100000)
	run(t, "ip", "link", "add", br, "type", "bridge")
	t.Cleanup(func() { exec.Command("ip", "link", "del", br).Run() })
	nsVeth, hostVeth := testNetns(t, "a", "10.77.0.2/24", br)
	nsBare, _ := testNetns(t, "b", "", "")

	src := NewSource("attach", KindNetns, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan Event)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, events) }()

	type result struct {
		pu  PU
		err error
	}
	// attach calls Attach and, when it succeeds, takes its Start event: Run
	// has taken the event from the Source when Attach returns but may still
	// be handing it on.
	attach := func(req AttachRequest) result {
		r := make(chan result, 1)
		go func() { pu, err := src.Attach(ctx, req); r <- result{pu, err} }()
		var res result
		select {
		case res = <-r:
		case <-time.After(5 * time.Second):
			t.Fatalf("attach %+v blocked", req)
		}
		if res.err == nil {
			if ev := recv(t, events); ev.Type != Start || ev.PU.ID != res.pu.ID || ev.Source != "attach" {
				t.Fatalf("attach %+v emitted %v", req, ev)
			}
		}
		return res
	}

	res := attach(AttachRequest{NetNS: nsVeth, Name: "web1", Labels: map[string]string{"app": "web", "@sys:name": "db"}})
	if res.err != nil {
		t.Fatal(res.err)
	}
	pu := res.pu
	if pu.HostVeth != hostVeth || pu.HostVethIndex == 0 || pu.Bridge != br || pu.Network != NetworkBridge || pu.Kind != KindNetns {
		t.Errorf("pu %+v: want host veth %s on %s, bridge network, netns", pu, hostVeth, br)
	}
	if len(pu.IPs) != 1 || pu.IPs[0] != netip.MustParseAddr("10.77.0.2") {
		t.Errorf("IPs %v", pu.IPs)
	}
	if got := pu.Tags.String(); got != "@sys:id=web1,@sys:kind=netns,@sys:name=web1,app=web" {
		t.Errorf("tags %s", got)
	}
	if ok, why := pu.Enforceable(); !ok {
		t.Errorf("not enforceable: %s", why)
	}

	// Same namespace under another name, same name again: refused.
	if r := attach(AttachRequest{NetNS: "/var/run/netns/" + nsVeth, Name: "other"}); !errors.Is(r.err, ErrExists) {
		t.Errorf("second attach of the same namespace: %v", r.err)
	}
	if r := attach(AttachRequest{NetNS: nsBare, Name: "web1"}); !errors.Is(r.err, ErrExists) {
		t.Errorf("duplicate name: %v", r.err)
	}
	// Bad namespaces.
	for _, bad := range []string{"", "nope-" + nsVeth, "/etc/passwd", ".."} {
		if r := attach(AttachRequest{NetNS: bad}); r.err == nil {
			t.Errorf("attach %q succeeded", bad)
		}
	}
	// Loopback-only namespace: no network.
	res = attach(AttachRequest{NetNS: nsBare})
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.pu.ID != nsBare || res.pu.Network != NetworkNone || res.pu.HostVeth != "" {
		t.Errorf("bare namespace PU %+v", res.pu)
	}
	if got := len(src.List()); got != 2 {
		t.Errorf("List has %d PUs, want 2", got)
	}

	errc := make(chan error, 1)
	go func() { errc <- src.Remove(ctx, "web1") }()
	for _, want := range []EventType{Stop, Destroy} {
		if ev := recv(t, events); ev.Type != want || ev.PU.ID != "web1" || ev.PU.HostVeth != hostVeth {
			t.Errorf("got %v, want %v web1", ev, want)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if err := src.Remove(ctx, "web1"); !errors.Is(err, ErrUnknown) {
		t.Errorf("second remove: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	// Calls after Run ended give up with their ctx.
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if err := src.Add(short, PU{ID: "late", Tags: identity.Tags{}}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("add without a running Source: %v", err)
	}
}
