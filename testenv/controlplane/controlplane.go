// Package controlplane runs a real Kubernetes control plane for tests: a
// private etcd and kube-apiserver (no kubelet, scheduler or controller
// manager), built from the tools module tools/controlplane (`make
// controlplane`). Start returns a rest.Config and a kubeconfig file for
// client-go; everything is stopped and removed by t.Cleanup, also when the
// test fails.
//
// Without a kubelet and controllers, some things a cluster does are not done:
// pods are never scheduled nor run (set spec.nodeName and, with
// UpdateStatus, status.podIP and phase yourself), a pod deleted with a grace
// period stays Terminating forever (delete with grace period 0), a deleted
// namespace stays Terminating, and no "default" ServiceAccount is created
// (the ServiceAccount admission plugin is disabled so pods need none).
package controlplane

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Options configure a control plane; the zero value is a usable default.
type Options struct {
	// ServiceClusterIPRange is --service-cluster-ip-range (default 10.96.0.0/12).
	ServiceClusterIPRange string
	// APIServerFlags are appended to kube-apiserver's flags (a later flag
	// wins over a default one).
	APIServerFlags []string
	// ReadyTimeout bounds the start of each process (default 90 s: a
	// 2-core machine shared with other builds can be slow).
	ReadyTimeout time.Duration
}

// ControlPlane is a running etcd and kube-apiserver.
type ControlPlane struct {
	// Config is an admin (system:masters) client configuration: client
	// certificate over TLS, verified against the control plane's own CA.
	Config *rest.Config
	// Kubeconfig is a file with the same credential, for processes (the
	// daemon under test) and kubectl.
	Kubeconfig string
	// URL is the apiserver's address, https://127.0.0.1:PORT.
	URL string
	// Dir holds the certificates, etcd's data and the logs; removed at cleanup.
	Dir string

	t                testing.TB
	opts             Options
	etcdBin, apiBin  string
	etcdURL          string
	apiPort          int
	pki              *pki
	etcd, apiserver  *process
	apiserverStarted int // kube-apiserver starts, for log names
	stopped          bool
	lock             *os.File // flocked while the directory is in use
}

// Start starts etcd, then kube-apiserver on free loopback ports, and
// returns once /readyz answers ok and the default namespace exists. It
// skips or fails the test when the binaries are missing (see Binaries).
// Cleanup stops kube-apiserver first, then etcd (their process groups,
// SIGTERM then SIGKILL), prints their logs' tails if the test failed, and
// removes Dir.
func Start(t testing.TB, opts Options) *ControlPlane {
	t.Helper()
	etcdBin, apiBin := Binaries(t)
	if opts.ServiceClusterIPRange == "" {
		opts.ServiceClusterIPRange = "10.96.0.0/12"
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 90 * time.Second
	}
	serviceNet, err := netip.ParsePrefix(opts.ServiceClusterIPRange)
	if err != nil {
		t.Fatalf("controlplane: service range: %v", err)
	}
	removeStale()
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		t.Fatal(err)
	}
	cp := &ControlPlane{t: t, opts: opts, etcdBin: etcdBin, apiBin: apiBin, Dir: dir}
	t.Cleanup(cp.stop)
	// The lock, held until the test process ends, tells removeStale that
	// the directory is in use.
	if cp.lock, err = os.Create(filepath.Join(dir, "lock")); err == nil {
		err = syscall.Flock(int(cp.lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	}
	if err != nil {
		t.Fatalf("controlplane: lock: %v", err)
	}

	if cp.pki, err = newPKI(dir, serviceNet.Masked().Addr().Next().AsSlice()); err != nil {
		t.Fatalf("controlplane: certificates: %v", err)
	}
	began := time.Now()
	cp.startEtcd()
	etcdReady := time.Now()
	cp.StartAPIServer()
	cp.URL = "https://127.0.0.1:" + strconv.Itoa(cp.apiPort)
	cp.Config = &rest.Config{
		Host: cp.URL,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   []byte(cp.pki.caCert),
			CertData: cp.pki.adminCert,
			KeyData:  cp.pki.adminKey,
		},
		QPS:   -1, // no client-side rate limit: tests create many objects fast
		Burst: -1,
	}
	cp.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := cp.writeKubeconfig(); err != nil {
		t.Fatalf("controlplane: kubeconfig: %v", err)
	}
	cp.waitDefaultNamespace()
	t.Logf("controlplane: etcd ready in %v, kube-apiserver in %v more (%s, %s)", etcdReady.Sub(began).Round(time.Millisecond),
		time.Since(etcdReady).Round(time.Millisecond), cp.URL, dir)
	return cp
}

// Client returns a clientset with the admin credential.
func (cp *ControlPlane) Client() kubernetes.Interface {
	cp.t.Helper()
	c, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		cp.t.Fatal(err)
	}
	return c
}

// ConfigAs returns the admin configuration impersonating user (with
// groups): what RBAC lets that user do, without issuing it a credential.
// A service account is user "system:serviceaccount:NS:NAME" with groups
// "system:serviceaccounts" and "system:serviceaccounts:NS".
func (cp *ControlPlane) ConfigAs(user string, groups ...string) *rest.Config {
	c := rest.CopyConfig(cp.Config)
	c.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
	return c
}

// StopAPIServer stops kube-apiserver and keeps etcd: the API server is
// unreachable (connection refused) until StartAPIServer.
func (cp *ControlPlane) StopAPIServer() {
	cp.t.Helper()
	if cp.apiserver != nil {
		if err := cp.apiserver.stop(); err != nil {
			cp.t.Errorf("controlplane: %v", err)
		}
		cp.apiserver = nil
	}
}

// StartAPIServer starts kube-apiserver (again, on the same port with the
// same certificates and data after StopAPIServer) and waits for /readyz.
func (cp *ControlPlane) StartAPIServer() {
	cp.t.Helper()
	if cp.apiserver != nil {
		cp.t.Fatal("controlplane: kube-apiserver is already running")
	}
	restart := cp.apiPort != 0
	for attempt := 1; ; attempt++ {
		if !restart {
			cp.apiPort = freePorts(cp.t, 1)[0]
		}
		cp.apiserverStarted++
		p, err := cp.launch("kube-apiserver", cp.apiBin, cp.apiserverArgs(), fmt.Sprintf("kube-apiserver-%d.log", cp.apiserverStarted))
		if err == nil {
			err = cp.waitReady(p, cp.readyz)
		}
		if err == nil {
			cp.apiserver = p
			return
		}
		p.stop()
		if restart || attempt == 3 || !p.portInUse() {
			cp.t.Fatalf("controlplane: kube-apiserver: %v\n%s", err, p.tail(40))
		}
		// Another process took the port between freePorts and the bind: retry.
	}
}

func (cp *ControlPlane) startEtcd() {
	cp.t.Helper()
	for attempt := 1; ; attempt++ {
		ports := freePorts(cp.t, 2)
		cp.etcdURL = "http://127.0.0.1:" + strconv.Itoa(ports[0])
		peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
		args := []string{
			"--name=trireme-test",
			"--data-dir=" + filepath.Join(cp.Dir, "etcd"),
			"--listen-client-urls=" + cp.etcdURL,
			"--advertise-client-urls=" + cp.etcdURL,
			"--listen-peer-urls=" + peerURL,
			"--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=trireme-test=" + peerURL,
			"--initial-cluster-state=new",
			// Test data: durability across a machine crash is useless, fsync slow.
			"--unsafe-no-fsync",
			"--log-level=warn",
		}
		p, err := cp.launch("etcd", cp.etcdBin, args, "etcd.log")
		if err == nil {
			err = cp.waitReady(p, cp.etcdHealthy)
		}
		if err == nil {
			cp.etcd = p
			return
		}
		p.stop()
		if attempt == 3 || !p.portInUse() {
			cp.t.Fatalf("controlplane: etcd: %v\n%s", err, p.tail(40))
		}
		os.RemoveAll(filepath.Join(cp.Dir, "etcd"))
	}
}

func (cp *ControlPlane) apiserverArgs() []string {
	return append([]string{
		"--etcd-servers=" + cp.etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(cp.apiPort),
		"--cert-dir=" + filepath.Join(cp.Dir, "apiserver-certs"), // unused (certs given), but never /var/run/kubernetes
		"--tls-cert-file=" + cp.pki.servingCertFile,
		"--tls-private-key-file=" + cp.pki.servingKeyFile,
		"--client-ca-file=" + cp.pki.caFile,
		"--anonymous-auth=false",
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + cp.pki.serviceAccPub,
		"--service-account-signing-key-file=" + cp.pki.serviceAccountKey,
		"--service-cluster-ip-range=" + cp.opts.ServiceClusterIPRange,
		// No controller manager creates the "default" ServiceAccount that
		// this plugin would require of every pod.
		"--disable-admission-plugins=ServiceAccount",
		// The node agent's DaemonSet is privileged and on the host network;
		// its manifests must validate.
		"--allow-privileged=true",
		// No endpoints for the kubernetes Service: nothing would serve them.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		// Open watches (every informer's) would hold a graceful shutdown
		// until the request timeout; a test stops at once.
		"--shutdown-watch-termination-grace-period=1s",
	}, cp.opts.APIServerFlags...)
}

// launch starts bin in a process group of its own, with a clean
// environment (etcd reads every ETCD_* variable as a flag), its output to
// a log file in Dir. The process is killed if the test binary dies.
func (cp *ControlPlane) launch(name, bin string, args []string, logName string) (*process, error) {
	p := &process{name: name, logPath: filepath.Join(cp.Dir, logName), done: make(chan struct{})}
	log, err := os.Create(p.logPath)
	if err != nil {
		close(p.done)
		return p, err
	}
	defer log.Close()
	cmd := exec.Command(bin, args...)
	cmd.Dir = cp.Dir
	cmd.Env = cleanEnv(os.Environ(), cp.Dir)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := startFromSpawner(cmd); err != nil {
		close(p.done)
		return p, err
	}
	p.cmd = cmd
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// Pdeathsig fires when the thread that forked the child exits, not the
// process. Go ends a thread when a goroutine locked to it returns without
// unlocking, which namespace code (testenv, netns) does on purpose to
// discard a thread left in another namespace; if that thread had forked
// etcd, etcd would die mid-test. Every child is therefore forked from one
// goroutine locked to its own thread for the life of the test binary.
var (
	spawnOnce sync.Once
	spawnReqs chan spawnReq
)

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

func startFromSpawner(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the process
			for r := range spawnReqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error)
	spawnReqs <- spawnReq{cmd, done}
	return <-done
}

// cleanEnv keeps PATH and the Go runtime's knobs, nothing a binary would
// read as configuration (ETCD_*, KUBECONFIG, proxies, ...).
func cleanEnv(env []string, home string) []string {
	out := []string{"HOME=" + home, "TMPDIR=" + home}
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if k == "PATH" || k == "GOMAXPROCS" || k == "GOGC" || k == "GOMEMLIMIT" || k == "GODEBUG" || k == "GOTRACEBACK" {
			out = append(out, kv)
		}
	}
	return out
}

// waitReady polls ready until it returns nil, the process exits, or the
// timeout expires.
func (cp *ControlPlane) waitReady(p *process, ready func() error) error {
	deadline := time.Now().Add(cp.opts.ReadyTimeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("exited at start (%v)", p.err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %v: %v", cp.opts.ReadyTimeout, err)
		}
	}
}

var probeClient = &http.Client{Timeout: 2 * time.Second}

func (cp *ControlPlane) etcdHealthy() error {
	resp, err := probeClient.Get(cp.etcdURL + "/health")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	body.ReadFrom(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body.String(), `"health":"true"`) {
		return fmt.Errorf("/health: %s %s", resp.Status, body.String())
	}
	return nil
}

// readyz asks /readyz with the admin credential (anonymous requests are off).
func (cp *ControlPlane) readyz() error {
	cfg := &rest.Config{
		Host:            "https://127.0.0.1:" + strconv.Itoa(cp.apiPort),
		TLSClientConfig: rest.TLSClientConfig{CAData: []byte(cp.pki.caCert), CertData: cp.pki.adminCert, KeyData: cp.pki.adminKey},
		Timeout:         2 * time.Second,
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	body, err := c.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(context.Background())
	if err != nil {
		return fmt.Errorf("/readyz: %v %s", err, body)
	}
	return nil
}

// waitDefaultNamespace waits for the namespaces the apiserver creates
// itself after start (default, kube-system), which /readyz does not cover.
func (cp *ControlPlane) waitDefaultNamespace() {
	cp.t.Helper()
	c := cp.Client()
	deadline := time.Now().Add(cp.opts.ReadyTimeout)
	for {
		_, err := c.CoreV1().Namespaces().Get(context.Background(), metav1.NamespaceDefault, metav1.GetOptions{})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			cp.t.Fatalf("controlplane: namespace default not created: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (cp *ControlPlane) writeKubeconfig() error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["trireme-test"] = &clientcmdapi.Cluster{Server: cp.URL, CertificateAuthorityData: []byte(cp.pki.caCert)}
	cfg.AuthInfos[adminUser] = &clientcmdapi.AuthInfo{ClientCertificateData: cp.pki.adminCert, ClientKeyData: cp.pki.adminKey}
	cfg.Contexts["trireme-test"] = &clientcmdapi.Context{Cluster: "trireme-test", AuthInfo: adminUser}
	cfg.CurrentContext = "trireme-test"
	return clientcmd.WriteToFile(*cfg, cp.Kubeconfig)
}

// stop is the cleanup: kube-apiserver before etcd (it would otherwise spend
// its shutdown retrying etcd), then the directory. A second call does nothing.
func (cp *ControlPlane) stop() {
	if cp.stopped {
		return
	}
	cp.stopped = true
	failed := cp.t.Failed()
	for _, p := range []*process{cp.apiserver, cp.etcd} {
		if p == nil {
			continue
		}
		if err := p.stop(); err != nil {
			cp.t.Errorf("controlplane: %v", err)
			failed = true
		}
	}
	if failed {
		logs, _ := filepath.Glob(filepath.Join(cp.Dir, "*.log"))
		for _, l := range logs {
			p := &process{logPath: l}
			cp.t.Logf("controlplane: end of %s:\n%s", filepath.Base(l), p.tail(60))
		}
	}
	if err := os.RemoveAll(cp.Dir); err != nil {
		cp.t.Errorf("controlplane: %v", err)
	}
	if cp.lock != nil {
		cp.lock.Close()
	}
}

// dirPrefix starts the name of every control plane's directory in $TMPDIR.
const dirPrefix = "trireme-cp-"

// removeStale removes the directories of control planes whose test process
// died without its cleanup (a go test timeout, a kill): their lock is free.
// Their etcd and kube-apiserver died with it (Pdeathsig). A directory
// without a lock file is one being created, unless it is old.
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range dirs {
		f, err := os.Open(filepath.Join(d, "lock"))
		if err != nil {
			if st, err := os.Stat(d); err == nil && time.Since(st.ModTime()) > 10*time.Minute {
				os.RemoveAll(d)
			}
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			os.RemoveAll(d)
		}
		f.Close()
	}
}

// process is one running binary in its own process group.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when Wait returned
	err     error         // Wait's result
}

// PID returns the process id.
func (p *process) PID() int { return p.cmd.Process.Pid }

// stop sends SIGTERM to the process group, waits up to 10 s, then SIGKILLs
// the group. It reports a process that needed SIGKILL.
func (p *process) stop() error {
	if p == nil || p.cmd == nil || p.cmd.Process == nil {
		return nil
	}
	pgid := p.cmd.Process.Pid
	var err error
	select {
	case <-p.done:
		err = fmt.Errorf("%s (pid %d) had exited before it was stopped: %v", p.name, pgid, p.err)
	default:
		syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			err = fmt.Errorf("%s (pid %d) ignored SIGTERM for 10 s; killed", p.name, pgid)
			syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done
		}
	}
	// Anything the process started in its group goes with it.
	syscall.Kill(-pgid, syscall.SIGKILL)
	return err
}

// portInUse reports whether the process failed because its port was taken.
func (p *process) portInUse() bool {
	b, _ := os.ReadFile(p.logPath)
	return bytes.Contains(b, []byte("address already in use"))
}

// tail returns the last n lines of the process's log.
func (p *process) tail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freePorts returns n distinct loopback TCP ports free at the time of the
// call. Another process may take one before it is bound: callers retry.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// RSS returns the resident memory of etcd and kube-apiserver in bytes (0
// when stopped), as /proc reports it.
func (cp *ControlPlane) RSS() (etcd, apiserver int64) {
	return cp.etcd.rss(), cp.apiserver.rss()
}

func (p *process) rss() int64 {
	if p == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.PID()))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// Processes returns the pids of the running etcd and kube-apiserver (0 when
// stopped), for tests of the cleanup itself.
func (cp *ControlPlane) Processes() (etcd, apiserver int) {
	if cp.etcd != nil {
		etcd = cp.etcd.PID()
	}
	if cp.apiserver != nil {
		apiserver = cp.apiserver.PID()
	}
	return etcd, apiserver
}
