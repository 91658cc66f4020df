package attacks

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/trireme-go/trireme/netsetup"
	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
)

// TestAttachAPIAbuse (issue #11 item 13): the control API refuses, with a
// status and a reason, every request that would break the node or its
// policing: a name already in use (which returned the other PU's info and
// left the namespace unpoliced), a namespace already policed, the daemon's
// own namespace (its injection port would be steered: every new connection
// on the node would stop), a namespace behind a veth that is not a bridge
// port (an uplink), names the CLI cannot detach, labels with control
// characters, '=' in a key, reserved keys, oversized values. The node
// keeps working and policing afterwards.
func TestAttachAPIAbuse(t *testing.T) {
	s := newScene(t, sceneOptions{})
	stranger := s.node.AddPU() // an unpoliced namespace on the bridge
	uplink := uplinkNamespace(t, s.node)
	cl := s.d.Client()
	pus, err := cl.ListPUs()
	if err != nil || len(pus) != 4 {
		t.Fatalf("PUs before: %v %v", pus, err)
	}
	names := map[string]string{} // name -> ID
	for _, p := range pus {
		names[p.Name] = p.ID
	}
	own := filepath.Join(netsetup.NetnsDir, s.node.Name)
	cases := []struct {
		name   string
		req    node.AttachRequest
		status int
		says   string
	}{
		{"another PU's name", node.AttachRequest{NetNS: stranger.Name, Name: s.web.Name, Labels: map[string]string{"app": "web"}}, 409, "exists"},
		{"a namespace already policed", node.AttachRequest{NetNS: s.web.Name, Name: "web-again"}, 409, "already policed"},
		{"the daemon's own namespace", node.AttachRequest{NetNS: own, Name: "node"}, 400, "own network namespace"},
		{"an uplink's namespace", node.AttachRequest{NetNS: uplink, Name: "uplink"}, 400, "not a port of a bridge"},
		{"a name with a slash", node.AttachRequest{NetNS: stranger.Name, Name: "a/b"}, 400, "name"},
		{"a name with a space", node.AttachRequest{NetNS: stranger.Name, Name: "a b"}, 400, "name"},
		{"a name of 64 bytes", node.AttachRequest{NetNS: stranger.Name, Name: strings.Repeat("n", 64)}, 400, "name"},
		{"a label value with NUL", node.AttachRequest{NetNS: stranger.Name, Labels: map[string]string{"app": "web\x00db"}}, 400, "control character"},
		{"a label value with a newline", node.AttachRequest{NetNS: stranger.Name, Labels: map[string]string{"app": "web\napp=db"}}, 400, "control character"},
		{"a label key with a newline", node.AttachRequest{NetNS: stranger.Name, Labels: map[string]string{"a\nb": "x"}}, 400, "control character"},
		{"a label key with '='", node.AttachRequest{NetNS: stranger.Name, Labels: map[string]string{"app=db": "x"}}, 400, "'='"},
		{"a reserved label key", node.AttachRequest{NetNS: stranger.Name, Labels: map[string]string{"@sys:name": "db"}}, 400, "reserved"},
		{"an oversized label value", node.AttachRequest{NetNS: stranger.Name, Labels: map[string]string{"app": strings.Repeat("x", 2000)}}, 400, "bytes"},
		{"a tag with NUL", node.AttachRequest{NetNS: stranger.Name, Tags: map[string]string{"@sys:namespace": "prod\x00"}}, 400, "control character"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := cl.AttachPU(c.req)
			var apiErr *node.APIError
			if !errors.As(err, &apiErr) || apiErr.Status != c.status || !strings.Contains(apiErr.Message, c.says) {
				t.Fatalf("attach %q: %+v, %v; want %d saying %q", c.req.Name, p, err, c.status, c.says)
			}
		})
	}
	// Through the CLI: a conflict is an error, not the other PU's ID.
	out, err := exec.Command(testenv.Binary(t), "pu", "attach", stranger.Name, "--name", s.db.Name, "--socket", s.d.Socket).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "exists") {
		t.Errorf("trireme pu attach under db's name: %v\n%s", err, out)
	}
	// Nothing changed: the same four PUs, in their namespaces.
	after, err := cl.ListPUs()
	if err != nil || len(after) != 4 {
		t.Fatalf("PUs after the refused requests: %+v %v", after, err)
	}
	for _, p := range after {
		if names[p.Name] != p.ID || p.NetNS != filepath.Join(netsetup.NetnsDir, p.Name) {
			t.Errorf("PU changed: %+v", p)
		}
	}
	// The node still works and still polices.
	db := s.db.ServeEcho(5432)
	if err := s.web.Echo(db, "node ok", 3*time.Second); err != nil {
		t.Errorf("web -> db:5432 after the refused requests: %v", err)
	}
	if err := s.attacker.Echo(db, "x", 2*time.Second); err == nil {
		t.Error("attacker -> db:5432 allowed after the refused requests")
	}
	// What is valid works and is detachable from the CLI.
	testenv.RunBin(t, "pu", "attach", stranger.Name, "--name", "Stranger_1.a", "--label", "app=stranger", "--socket", s.d.Socket)
	testenv.RunBin(t, "pu", "detach", "netns-Stranger_1.a", "--socket", s.d.Socket)

	// trireme run's API: a taken name is a conflict, a bad label a 400.
	first, err := cl.CreatePU(node.CreateRequest{Name: "job", Labels: map[string]string{"app": "job"}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.DetachPU(first.ID)
	for _, c := range []struct {
		req    node.CreateRequest
		status int
	}{
		{node.CreateRequest{Name: "job"}, 409},
		{node.CreateRequest{Name: "job2", Labels: map[string]string{"app": "a\nb"}}, 400},
		{node.CreateRequest{Name: "job3", Labels: map[string]string{"k=v": "x"}}, 400},
		{node.CreateRequest{Name: "Job/4"}, 400},
	} {
		_, err := cl.CreatePU(c.req)
		var apiErr *node.APIError
		if !errors.As(err, &apiErr) || apiErr.Status != c.status {
			t.Errorf("create %+v: %v, want %d", c.req, err, c.status)
		}
	}
}

// uplinkNamespace makes a namespace joined to the node by a veth whose
// node end is not a bridge port (a routed uplink) and returns its name.
func uplinkNamespace(t *testing.T, n *testenv.Node) string {
	t.Helper()
	name := fmt.Sprintf("%s%s-up", testenv.NamePrefix, n.Suffix)
	ns, err := netsetup.CreateNetns(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ns.Close()
		if err := netsetup.DeleteNetns(name); err != nil {
			t.Error(err)
		}
	})
	n.MustDo(func() error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "upl0"
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(ns)}); err != nil {
			return err
		}
		l, err := netlink.LinkByName("upl0")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	return name
}
