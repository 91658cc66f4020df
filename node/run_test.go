package node_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trireme-go/trireme/node"
	"github.com/trireme-go/trireme/testenv"
)

// runCLI builds a `trireme ARGS` command as an operator on the daemon's
// machine would run it. The test daemon runs under `ip netns exec`, which
// gives it a mount namespace of its own: the namespaces it creates
// (/run/netns/trireme-NAME bind mounts) exist only there, so the CLI joins
// that mount namespace (on a real node, daemon and CLI share the host's).
func runCLI(t *testing.T, d *testenv.Daemon, args ...string) *exec.Cmd {
	full := append([]string{fmt.Sprintf("--mount=/proc/%d/ns/mnt", d.PID()), testenv.Binary(t)}, args...)
	return exec.Command("nsenter", full...)
}

// exitCode runs cmd and returns its exit code and combined output.
func exitCode(t *testing.T, cmd *exec.Cmd) (int, string) {
	t.Helper()
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	default:
		t.Fatalf("%v: %v", cmd.Args, err)
		return 0, ""
	}
}

// puGone checks that the PU is neither listed by the daemon nor left as a
// namespace or a veth on the node.
func puGone(t *testing.T, d *testenv.Daemon, id, nsName string) {
	t.Helper()
	pus, err := d.Client().ListPUs()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pus {
		if p.ID == id {
			t.Errorf("PU %s still listed: %+v", id, p)
		}
	}
	if _, err := os.Stat(filepath.Join("/run/netns", nsName)); err == nil {
		t.Errorf("namespace %s left behind", nsName)
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil || strings.Contains(string(out), nsName) {
		t.Errorf("ip netns list (%v):\n%s", err, out)
	}
	// One host veth per live PU trireme made (the injection port's veth
	// pair and the attached PU's aside).
	links, err := d.Node.Run(context.Background(), "ip", "-o", "link", "show", "type", "veth")
	if err != nil {
		t.Fatal(err)
	}
	live := 0
	for _, p := range pus {
		if p.Kind == "process" {
			live++
		}
	}
	if veths := strings.Count(links, ": trv"); veths != live {
		t.Errorf("%d veths of trireme-made PUs on the node, %d such PUs live:\n%s", veths, live, links)
	}
}

// TestRunProcess: `trireme run` end to end against a live daemon: a server
// and clients started with it, policed by their labels, exit codes passed
// through, signals passed on, and every PU gone when its command ends.
func TestRunProcess(t *testing.T) {
	testenv.RequireRoot(t)
	sfx := testenv.Suffix()
	testenv.AssertNothingLeft(t, sfx)
	// A namespace PU already on the bridge: its address is taken.
	n := testenv.NewNode(t, testenv.NodeOptions{PUs: 1, Suffix: sfx})
	policy := fmt.Sprintf(`
targetNetworks: [%s]
policies:
  - name: frontend
    selector: app=frontend
    egress:
      - to: [{selector: app=web}]
        ports: [tcp/8080]
        action: allow
  - name: web
    selector: app=web
    ingress:
      - from: [{selector: app=frontend}]
        ports: [tcp/8080]
        action: allow
`, n.Subnet)
	d := testenv.NewDaemon(t, n, testenv.DaemonOptions{SecretsDir: testenv.PSKDir(t), Policy: policy})
	d.Start()
	d.Attach(n.PUs[0], "app=bystander")

	// The server: a long-running `trireme run`, its output streamed.
	webName := "web-" + sfx
	web := runCLI(t, d, "run", "--socket", d.Socket, "--label", "app=web", "--name", webName, "--",
		testenv.Binary(t), "probe", "serve", "--tcp", "8080", "--name", webName)
	stdout, err := web.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	web.Stderr = os.Stderr
	if err := web.Start(); err != nil {
		t.Fatal(err)
	}
	webDone := make(chan error, 1)
	go func() { webDone <- web.Wait() }()
	t.Cleanup(func() {
		// As an operator would: SIGTERM (passed on to the server), then
		// SIGKILL.
		web.Process.Signal(syscall.SIGTERM)
		select {
		case <-webDone:
		case <-time.After(5 * time.Second):
			web.Process.Kill()
			<-webDone
		}
	})
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line
		io.Copy(io.Discard, stdout)
	}()
	select {
	case line := <-ready:
		if strings.TrimSpace(line) != "ready" {
			t.Fatalf("server printed %q, want ready", line)
		}
	case err := <-webDone:
		t.Fatalf("trireme run (server) exited: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("server not ready")
	}
	pu := findPU(t, d, "proc-"+webName)
	if pu.Kind != "process" || pu.Tags["app"] != "web" || len(pu.IPs) != 1 || !n.Subnet.Contains(pu.IPs[0]) {
		t.Fatalf("server PU: %+v", pu)
	}
	if pu.IPs[0] == n.PUs[0].Addr {
		t.Fatalf("server PU got %v, the address of the attached PU %s", pu.IPs[0], n.PUs[0].Name)
	}
	if out := testenv.RunBin(t, "pu", "ls", "--socket", d.Socket); !strings.Contains(out, webName) || !strings.Contains(out, "app=web") {
		t.Errorf("pu ls:\n%s", out)
	}
	target := netip.AddrPortFrom(pu.IPs[0], 8080).String()

	for _, tc := range []struct {
		name, label string
		cmd         []string
		code        int
		out         string
	}{
		{"allowed", "app=frontend", []string{testenv.Binary(t), "probe", "connect", "--tcp", target}, 0, "ok " + webName},
		// No egress rule: the client's own enforcer refuses (RST).
		{"denied", "app=other", []string{testenv.Binary(t), "probe", "connect", "--tcp", target}, 1, "refused"},
		{"exit code", "app=x", []string{"sh", "-c", "echo out; echo err >&2; exit 7"}, 7, "out\nerr"},
		{"killed by a signal", "app=x", []string{"sh", "-c", "kill -KILL $$"}, 128 + 9, ""},
		{"environment", "app=x", []string{"sh", "-c", `echo "$TRIREME_PU"`}, 0, "proc-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := strings.ReplaceAll(tc.name, " ", "-") + "-" + sfx
			args := append([]string{"run", "--socket", d.Socket, "--label", tc.label, "--name", name, "--"}, tc.cmd...)
			start := time.Now()
			code, out := exitCode(t, runCLI(t, d, args...))
			t.Logf("%s: exit %d in %v: %q", tc.name, code, time.Since(start).Round(time.Millisecond), out)
			if code != tc.code || !strings.Contains(out, tc.out) {
				t.Errorf("exit %d, output %q; want %d and %q", code, out, tc.code, tc.out)
			}
			puGone(t, d, "proc-"+name, "trireme-"+name)
		})
	}
	// The flow log has web's acceptance and the other client's refusal.
	var accepted, refused bool
	for _, r := range d.Records() {
		if r.Server.String() != target {
			continue
		}
		accepted = accepted || r.Direction == "ingress" && r.Action == "allow"
		refused = refused || r.Direction == "egress" && r.Action != "allow"
	}
	if !accepted || !refused {
		t.Errorf("flow log: accepted %v, refused %v; records %+v", accepted, refused, d.Records())
	}

	// Signals sent to `trireme run` reach the command; the PU goes.
	t.Run("SIGTERM", func(t *testing.T) {
		if err := web.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-webDone:
			if err != nil {
				t.Errorf("server ended with %v, want exit 0 (probe serve stops cleanly on SIGTERM)", err)
			}
			webDone <- nil // for the cleanup
		case <-time.After(10 * time.Second):
			t.Fatal("trireme run did not end on SIGTERM")
		}
		puGone(t, d, "proc-"+webName, "trireme-"+webName)
	})
	t.Run("SIGINT", func(t *testing.T) {
		name := "int-" + sfx
		c := runCLI(t, d, "run", "--socket", d.Socket, "--label", "app=x", "--name", name, "--", "sleep", "60")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		findPUEventually(t, d, "proc-"+name)
		if err := c.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		select {
		case err := <-done:
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 128+int(syscall.SIGINT) {
				t.Errorf("trireme run: %v, want exit %d (sleep killed by SIGINT)", err, 128+int(syscall.SIGINT))
			}
		case <-time.After(10 * time.Second):
			c.Process.Kill()
			t.Fatal("trireme run did not end on SIGINT")
		}
		puGone(t, d, "proc-"+name, "trireme-"+name)
	})
	// `trireme run` killed outright cannot pass anything on: the command
	// gets SIGTERM from the kernel (parent-death signal); the PU stays until
	// detached (the daemon cannot tell a dead CLI from a busy one).
	t.Run("SIGKILL", func(t *testing.T) {
		name := "kill-" + sfx
		c := runCLI(t, d, "run", "--socket", d.Socket, "--label", "app=x", "--name", name, "--", "sh", "-c", "echo $$; exec sleep 60")
		stdout, err := c.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		var pid int
		if _, err := fmt.Fscan(stdout, &pid); err != nil {
			c.Process.Kill()
			c.Wait()
			t.Fatalf("reading the command's PID: %v", err)
		}
		c.Process.Kill()
		c.Wait()
		deadline := time.Now().Add(5 * time.Second)
		for syscall.Kill(pid, 0) == nil {
			if time.Now().After(deadline) {
				syscall.Kill(pid, syscall.SIGKILL)
				t.Fatalf("command %d still running 5s after trireme run was killed", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
		findPU(t, d, "proc-"+name)
		testenv.RunBin(t, "pu", "detach", "proc-"+name, "--socket", d.Socket)
		puGone(t, d, "proc-"+name, "trireme-"+name)
	})
}

func findPU(t *testing.T, d *testenv.Daemon, id string) node.PUInfo {
	t.Helper()
	pus, err := d.Client().ListPUs()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pus {
		if p.ID == id {
			return p
		}
	}
	t.Fatalf("PU %s not listed: %+v", id, pus)
	return node.PUInfo{}
}

func findPUEventually(t *testing.T, d *testenv.Daemon, id string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if pus, err := d.Client().ListPUs(); err == nil {
			for _, p := range pus {
				if p.ID == id {
					return
				}
			}
		}
	}
	t.Fatalf("PU %s never listed", id)
}
