package process

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func testNetns(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	name := fmt.Sprintf("trproc-%d", os.Getpid())
	host := fmt.Sprintf("trp%d", os.Getpid()%100000)
	cleanup := func() {
		exec.Command("ip", "link", "del", host).Run()
		exec.Command("ip", "netns", "del", name).Run()
	}
	t.Cleanup(cleanup)
	for _, args := range [][]string{
		{"netns", "add", name},
		{"link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", name},
		{"-n", name, "addr", "add", "10.78.0.2/24", "dev", "eth0"},
		{"-n", name, "link", "set", "eth0", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	return "/var/run/netns/" + name
}

func netnsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestRunInNetns(t *testing.T) {
	ns := testNetns(t)
	before := netnsInode(t, "/proc/self/ns/net")

	tests := []struct {
		name    string
		script  string
		ctxWait time.Duration // cancel ctx after this long (0: never)
		code    int
		out     string
	}{
		{"sees the PU's interfaces, exit code", "ip -o -4 addr show eth0; readlink /proc/self/ns/net; exit 7", 0, 7, "10.78.0.2/24"},
		{"success", "true", 0, 0, ""},
		{"killed by a signal", "kill -KILL $$", 0, 128 + 9, ""},
		{"ctx cancelled: SIGTERM", "exec sleep 30", 200 * time.Millisecond, 128 + 15, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			cmd := exec.Command("sh", "-c", tc.script)
			cmd.Stdout, cmd.Stderr = &out, &errb
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.ctxWait > 0 {
				time.AfterFunc(tc.ctxWait, cancel)
			}
			code, err := Run(ctx, ns, cmd)
			if err != nil {
				t.Fatal(err)
			}
			if code != tc.code || !strings.Contains(out.String(), tc.out) {
				t.Errorf("exit %d output %q (stderr %q), want %d containing %q", code, out.String(), errb.String(), tc.code, tc.out)
			}
			if tc.out != "" {
				// The child's namespace is the PU's, not ours.
				want := fmt.Sprintf("net:[%d]", netnsInode(t, ns))
				if !strings.Contains(out.String(), want) {
					t.Errorf("child netns %q, want %s", out.String(), want)
				}
			}
		})
	}
	// SIGTERM sent to us is passed on; the command's exit code says so.
	t.Run("SIGTERM forwarded", func(t *testing.T) {
		cmd := exec.Command("sh", "-c", "exec sleep 30")
		time.AfterFunc(200*time.Millisecond, func() { syscall.Kill(os.Getpid(), syscall.SIGTERM) })
		code, err := Run(context.Background(), ns, cmd)
		if err != nil || code != 128+15 {
			t.Errorf("exit %d, %v; want 143", code, err)
		}
	})
	// No thread of ours was left in the PU's namespace: run many times and
	// check where new threads and the process are.
	for i := 0; i < 20; i++ {
		cmd := exec.Command("true")
		if _, err := Run(context.Background(), ns, cmd); err != nil {
			t.Fatal(err)
		}
	}
	if after := netnsInode(t, "/proc/self/ns/net"); after != before {
		t.Errorf("caller's netns changed: %d -> %d", before, after)
	}
	tasks, _ := os.ReadDir("/proc/self/task")
	pu := netnsInode(t, ns)
	for _, task := range tasks {
		if netnsInode(t, "/proc/self/task/"+task.Name()+"/ns/net") == pu {
			t.Errorf("thread %s left in the PU namespace", task.Name())
		}
	}
}

func TestRunErrors(t *testing.T) {
	ns := testNetns(t)
	tests := []struct {
		name string
		ns   string
		argv []string
	}{
		{"no such namespace", "/var/run/netns/does-not-exist", []string{"true"}},
		{"not a namespace", "/etc/hostname", []string{"true"}},
		{"no such command", ns, []string{"/nonexistent/cmd"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Run(context.Background(), tc.ns, exec.Command(tc.argv[0], tc.argv[1:]...)); err == nil {
				t.Error("no error")
			}
		})
	}
}
