// Package netsetup builds the kernel plumbing of a trireme node from Go:
// named network namespaces, the node bridge, processing units (a namespace
// joined to the bridge by a veth pair) and the injection port. Subpackages
// hold the dataplane's kernel devices: tap (capture), inject (AF_PACKET
// injection), steer (nftables steering) and vnet (virtio-net headers).
//
// Every function acts in the network namespace of the calling OS thread;
// use InNetns to act in another one.
package netsetup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsDir is where named namespaces are bind-mounted, as `ip netns` does.
const NetnsDir = "/var/run/netns"

// StaleName reports whether name is prefix, a process ID, sep, ... and that
// process is gone: the leftover of a run that was killed (demo and perf name
// their namespaces and directories so).
func StaleName(name, prefix, sep string) bool {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return false
	}
	pidStr, _, ok := strings.Cut(rest, sep)
	pid, err := strconv.Atoi(pidStr)
	if !ok || err != nil || pid <= 0 || pid == os.Getpid() {
		return false
	}
	return syscall.Kill(pid, 0) == syscall.ESRCH
}

// CreateNetns creates a named network namespace (visible to `ip netns`) and
// returns a handle to it. The calling goroutine's namespace is unchanged.
// The caller closes the handle.
func CreateNetns(name string) (netns.NsHandle, error) {
	if err := checkName(name); err != nil {
		return netns.None(), err
	}
	if err := shareNetnsDir(); err != nil {
		return netns.None(), err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return netns.None(), fmt.Errorf("netsetup: current netns: %w", err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	// NewNamed switches the thread into the new namespace: switch back
	// before anything else runs on this thread.
	if serr := netns.Set(orig); serr != nil {
		// The thread is stuck in the wrong namespace: do not unlock it, so
		// the runtime kills it instead of reusing it.
		runtime.LockOSThread()
		return netns.None(), fmt.Errorf("netsetup: restore netns: %w", serr)
	}
	if err != nil {
		return netns.None(), fmt.Errorf("netsetup: create netns %q: %w", name, err)
	}
	return h, nil
}

// shareNetnsDir makes NetnsDir a shared mount point of its own before a
// namespace is mounted in it, as `ip netns add` does. Otherwise the first
// `ip netns add` after ours (by a user, a CNI plugin or a test) bind-mounts
// the directory onto itself and hides the namespaces mounted in it before:
// they can then be neither unmounted nor removed (EBUSY) until a reboot.
func shareNetnsDir() error {
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return fmt.Errorf("netsetup: %w", err)
	}
	err := unix.Mount("", NetnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) {
		// Not a mount point yet: make it one (a racing `ip netns add`
		// may do the same; two binds stacked are still one directory).
		if err = unix.Mount(NetnsDir, NetnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err == nil {
			err = unix.Mount("", NetnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		}
	}
	if err != nil {
		return fmt.Errorf("netsetup: make %s a shared mount point: %w", NetnsDir, err)
	}
	return nil
}

// DeleteNetns removes a named namespace. Deleting one that does not exist is
// not an error. Links inside it disappear when its last user goes away.
func DeleteNetns(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	p := filepath.Join(NetnsDir, name)
	if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("netsetup: unmount %s: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("netsetup: delete netns %q: %w", name, err)
	}
	return nil
}

// NetnsExists reports whether a named namespace exists.
func NetnsExists(name string) bool {
	_, err := os.Stat(filepath.Join(NetnsDir, name))
	return err == nil
}

// OpenNetns returns a handle to a named namespace.
func OpenNetns(name string) (netns.NsHandle, error) {
	if err := checkName(name); err != nil {
		return netns.None(), err
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		return netns.None(), fmt.Errorf("netsetup: open netns %q: %w", name, err)
	}
	return h, nil
}

// EnterNetns locks the calling goroutine to its OS thread and switches the
// thread into ns; leave switches it back and unlocks it. Sockets and
// devices created in between, and processes forked (a child inherits the
// forking thread's namespace), are in ns. If switching back fails, leave
// keeps the thread locked, so that the runtime discards the thread when the
// goroutine exits instead of reusing it in the wrong namespace.
//
// Exiting a goroutine while locked is not the way to drop a switched
// thread: on the main thread the runtime cannot exit and parks it forever,
// still in the namespace, which then outlives its deletion. Call leave.
func EnterNetns(ns netns.NsHandle) (leave func() error, err error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("netsetup: current netns: %w", err)
	}
	if err := netns.Set(ns); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("netsetup: enter netns: %w", err)
	}
	return func() error {
		defer orig.Close()
		if err := netns.Set(orig); err != nil {
			return fmt.Errorf("netsetup: restore netns: %w", err) // thread stays locked: discarded
		}
		runtime.UnlockOSThread()
		return nil
	}, nil
}

// InNetns runs fn on a locked OS thread switched into ns, and switches back
// afterwards (EnterNetns). Sockets and devices created by fn stay in ns.
// Goroutines started by fn do not inherit ns.
func InNetns(ns netns.NsHandle, fn func() error) error {
	leave, err := EnterNetns(ns)
	if err != nil {
		return err
	}
	ferr := fn()
	if err := leave(); err != nil {
		return errors.Join(ferr, err)
	}
	return ferr // as fn returned it: callers may inspect its type
}

// OpenNetnsPath returns a handle to a namespace given by name (under
// NetnsDir) or by path (/proc/PID/ns/net, anything starting with "/").
func OpenNetnsPath(nameOrPath string) (netns.NsHandle, error) {
	if !strings.HasPrefix(nameOrPath, "/") {
		return OpenNetns(nameOrPath)
	}
	h, err := netns.GetFromPath(nameOrPath)
	if err != nil {
		return netns.None(), fmt.Errorf("netsetup: open netns %s: %w", nameOrPath, err)
	}
	return h, nil
}

// InNamedNetns is InNetns for a namespace given by name.
func InNamedNetns(name string, fn func() error) error {
	h, err := OpenNetns(name)
	if err != nil {
		return err
	}
	defer h.Close()
	return InNetns(h, fn)
}

func checkName(name string) error {
	if name == "" || name == "." || name == ".." || len(name) > 200 || filepath.Base(name) != name {
		return fmt.Errorf("netsetup: invalid netns name %q", name)
	}
	return nil
}
