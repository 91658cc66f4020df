package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netns"
)

// runProbe runs `trireme probe ARGS` in-process and returns its output and
// exit code.
func runProbe(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	// A fresh command tree: cobra keeps flag values between runs.
	cmd := &cobra.Command{Use: "trireme", SilenceUsage: true, SilenceErrors: true}
	cmd.AddCommand(probeCmd())
	cmd.SetArgs(append([]string{"probe"}, args...))
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	err := cmd.Execute()
	code := 0
	if err != nil {
		var ee *exitError
		if !errors.As(err, &ee) {
			t.Fatalf("probe %v: %v", args, err)
		}
		code = ee.code
	}
	return strings.TrimSpace(out.String()), code
}

func startProbeServer(t *testing.T, name string, tcp, udp []int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- probeServe(ctx, &out, "127.0.0.1", name, tcp, udp) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	for i := 0; i < 200 && !strings.Contains(out.String(), "ready"); i++ {
		select {
		case err := <-done:
			t.Fatalf("serve: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func freePort(t *testing.T, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// oddServer accepts TCP connections and treats them with fn.
func oddServer(t *testing.T, fn func(*net.TCPConn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go fn(c.(*net.TCPConn))
		}
	}()
	return l.Addr().String()
}

func TestProbe(t *testing.T) {
	tcp, udp := freePort(t, "tcp"), freePort(t, "udp")
	startProbeServer(t, "web-1", []int{tcp}, []int{udp})
	closedTCP, closedUDP := freePort(t, "tcp"), freePort(t, "udp")
	reset := oddServer(t, func(c *net.TCPConn) {
		c.Read(make([]byte, 16))
		c.SetLinger(0) // close with a RST
		c.Close()
	})
	silent := oddServer(t, func(c *net.TCPConn) {
		time.Sleep(3 * time.Second)
		c.Close()
	})
	hangup := oddServer(t, func(c *net.TCPConn) { c.Read(make([]byte, 16)); c.Close() })
	addr := func(p int) string { return "127.0.0.1:" + strconv.Itoa(p) }

	tests := []struct {
		name string
		args []string
		out  string
		code int
	}{
		{"tcp ok", []string{"--tcp", addr(tcp)}, "ok web-1", 0},
		{"udp ok", []string{"--udp", addr(udp)}, "ok web-1", 0},
		{"tcp refused", []string{"--tcp", addr(closedTCP)}, "refused", 1},
		{"udp refused (port unreachable)", []string{"--udp", addr(closedUDP)}, "refused", 1},
		{"tcp reset", []string{"--tcp", reset}, "reset", 2},
		{"tcp no answer", []string{"--tcp", silent, "--timeout", "300ms"}, "timeout", 3},
		{"closed without answer", []string{"--tcp", hangup}, "error: connection closed without an answer", 4},
		{"no target", nil, "", 4},
		{"both targets", []string{"--tcp", addr(tcp), "--udp", addr(udp)}, "", 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, code := runProbe(t, append([]string{"connect"}, tc.args...)...)
			if code != tc.code || (tc.out != "" && out != tc.out) {
				t.Errorf("got %q exit %d, want %q exit %d", out, code, tc.out, tc.code)
			}
		})
	}
}

func TestProbeServeBadFlags(t *testing.T) {
	for _, args := range [][]string{{"serve"}, {"serve", "--tcp", "80x"}, {"serve", "--udp", "70000"}} {
		if _, code := runProbe(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}

// A SYN that gets no answer at all (nothing answers ARP for the peer's
// address) times out: what a dropped SYN looks like.
func TestProbeConnectTimeoutInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespace)")
	}
	name := fmt.Sprintf("trprobe-%d", os.Getpid())
	for _, args := range [][]string{
		{"netns", "add", name},
		{"-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1"},
		{"-n", name, "addr", "add", "10.250.0.1/24", "dev", "v0"},
		{"-n", name, "link", "set", "v0", "up"},
		{"-n", name, "link", "set", "v1", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			exec.Command("ip", "netns", "del", name).Run()
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })

	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	type res struct {
		outcome int
		err     error
	}
	r := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // the thread dies with the goroutine: never reused in ns
		if err := netns.Set(ns); err != nil {
			r <- res{probeError, err}
			return
		}
		o, _, err := probeConnect("tcp", "10.250.0.2:80", 300*time.Millisecond)
		r <- res{o, err}
	}()
	got := <-r
	if got.outcome != probeTimeout {
		t.Errorf("outcome %s (%v), want timeout", probeOutcome[got.outcome], got.err)
	}
}
