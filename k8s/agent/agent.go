// Package agent is trireme's Kubernetes node agent: it watches the API
// server (client-go shared informers on Pods, Namespaces and
// NetworkPolicies) and keeps the node's enforcer in step with it. The
// NetworkPolicies in force become the node's policy through the
// translation of package k8s; every running pod of this node with an
// address becomes a PU with the identity tags k8s.PodTags gives it, found
// on the node by its address (its network namespace under /var/run/netns
// and that namespace's veth, see netns.go). A pod whose labels (or whose
// namespace's labels) change is relabelled in place; a deleted pod stops
// being enforced, its flows closed.
//
// While the API server cannot be reached the informers keep their last
// state, so the node keeps enforcing what it last knew; Status says so,
// and the agent logs the change both ways. Watches that break are
// restarted by the informers, which list again and catch up.
package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/trireme-go/trireme/k8s"
	"github.com/trireme-go/trireme/policy"
)

// IDPrefix starts the PU ID of every pod: "pod-<uid>". A pod deleted and
// created again under the same name is another pod (another UID).
const IDPrefix = "pod-"

// Enforcer is what the agent needs of the node's enforcer.
type Enforcer interface {
	// SetPolicy compiles set and puts it in force.
	SetPolicy(set *policy.Set) error
	// Pods returns the pods enforced now (those of a previous run
	// included), PU ID to tags.
	Pods() map[string]map[string]string
	// AttachPod enforces a pod.
	AttachPod(p PodPU) error
	// RetagPod changes the tags of an enforced pod in place.
	RetagPod(id string, tags map[string]string) error
	// DetachPod stops enforcing a pod; its flows are closed.
	DetachPod(id string) error
}

// PodPU is a pod to enforce: its PU ID, name, network namespace and tags
// (labels and reserved keys).
type PodPU struct {
	ID, Namespace, Name string
	NetNS               string // path of its network namespace
	Tags                map[string]string
}

// Config configures an Agent.
type Config struct {
	Client kubernetes.Interface
	// NodeName is this node's name in the cluster (spec.nodeName).
	NodeName string
	Enforcer Enforcer
	Log      *slog.Logger
	// Translate is passed to k8s.Translate (the cluster's pod CIDRs as
	// target networks).
	Translate k8s.Options
	// NetnsDir is where CNI plugins name pods' network namespaces
	// (default /var/run/netns).
	NetnsDir string
	// Debounce gathers a burst of API changes into one translation
	// (default 20 ms).
	Debounce time.Duration
	// Resync is the informers' resync period (default 0: none; watches
	// restarted by the informers list again anyway).
	Resync time.Duration
	// ProbeInterval is how often the API server is checked while the
	// agent believes it reachable (default 5 s; 1 s while unreachable).
	ProbeInterval time.Duration
}

// Agent keeps an enforcer in step with the API server.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	factory informers.SharedInformerFactory
	pods    cache.SharedIndexInformer
	nss     cache.SharedIndexInformer
	nps     cache.SharedIndexInformer
	kick    chan struct{}
	finder  *netnsFinder

	mu     sync.Mutex
	status Status
	// lastPolicy is the text of the set in force (no reload when equal).
	lastPolicy string
}

// Status is the agent's view of the API server and of this node's pods,
// for `trireme stats`.
type Status struct {
	NodeName string `json:"nodeName"`
	// Connected is false while the API server cannot be reached: the node
	// enforces what it last knew. Since is when that state began.
	Connected bool      `json:"connected"`
	Since     time.Time `json:"since"`
	LastError string    `json:"lastError,omitempty"`
	// Synced is set once the informers have listed everything.
	Synced bool `json:"synced"`
	// LastSync is when the node's policy and pods were last brought in
	// step with the informers' state.
	LastSync time.Time `json:"lastSync"`
	// Pods is the number of this node's pods enforced; Unenforced lists the
	// pods of this node that are not, with why.
	Pods       int               `json:"pods"`
	Unenforced map[string]string `json:"unenforced,omitempty"`
	// PolicyError is why the newest translation is not in force ("" when it is).
	PolicyError string `json:"policyError,omitempty"`
	// NetworkPolicies is the number of NetworkPolicies the node's policy
	// translates; PolicyHash identifies the policy in force (PolicyHash of
	// its printed form).
	NetworkPolicies int    `json:"networkPolicies"`
	PolicyHash      string `json:"policyHash,omitempty"`
}

// New prepares an agent (nothing runs until Run).
func New(cfg Config) (*Agent, error) {
	if cfg.Client == nil || cfg.Enforcer == nil || cfg.NodeName == "" {
		return nil, errors.New("agent: Client, Enforcer and NodeName are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.NetnsDir == "" {
		cfg.NetnsDir = "/var/run/netns"
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 20 * time.Millisecond
	}
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = 5 * time.Second
	}
	a := &Agent{cfg: cfg, log: cfg.Log.With("source", "kubernetes"), kick: make(chan struct{}, 1),
		finder: newNetnsFinder(cfg.NetnsDir)}
	a.status = Status{NodeName: cfg.NodeName, Connected: true, Since: time.Now()}
	// Every pod of the cluster is watched, not only this node's: the
	// translation needs them all (the default target networks are the pods'
	// addresses, and an egress rule's named port resolves against the
	// destination pod, wherever it runs). Only this node's become PUs.
	a.factory = informers.NewSharedInformerFactory(cfg.Client, cfg.Resync)
	a.pods = a.factory.Core().V1().Pods().Informer()
	a.nss = a.factory.Core().V1().Namespaces().Informer()
	a.nps = a.factory.Networking().V1().NetworkPolicies().Informer()
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { a.trigger() },
		UpdateFunc: func(any, any) { a.trigger() },
		DeleteFunc: func(any) { a.trigger() },
	}
	for _, inf := range []cache.SharedIndexInformer{a.pods, a.nss, a.nps} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return nil, err
		}
		if err := inf.SetWatchErrorHandlerWithContext(a.watchError); err != nil {
			return nil, err
		}
	}
	return a, nil
}

func (a *Agent) trigger() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// watchError is called by the informers when a list or watch fails.
func (a *Agent) watchError(_ context.Context, _ *cache.Reflector, err error) {
	a.setConnected(false, err)
}

// setConnected records the API server's reachability and logs each change.
func (a *Agent) setConnected(ok bool, err error) {
	a.mu.Lock()
	changed := a.status.Connected != ok
	if changed {
		a.status.Connected, a.status.Since = ok, time.Now()
	}
	if err != nil {
		a.status.LastError = err.Error()
	}
	a.mu.Unlock()
	switch {
	case changed && !ok:
		a.log.Warn("kubernetes API server unreachable: enforcing the last known pods and policies until it is back", "err", err)
	case changed && ok:
		a.log.Info("kubernetes API server reachable again: catching up")
		a.trigger()
	}
}

// Status returns a snapshot of the agent's state.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.status
	s.Unenforced = maps.Clone(a.status.Unenforced)
	return s
}

// Run starts the informers and keeps the enforcer in step until ctx ends.
// It returns once the informers have synced (or ctx ended) and does the
// rest in the background; done is closed when everything has stopped.
func (a *Agent) Run(ctx context.Context) (done <-chan struct{}) {
	var wg sync.WaitGroup
	a.factory.Start(ctx.Done())
	wg.Add(2)
	go func() { defer wg.Done(); a.probeLoop(ctx) }()
	go func() { defer wg.Done(); a.syncLoop(ctx) }()
	ch := make(chan struct{})
	go func() { wg.Wait(); a.factory.Shutdown(); close(ch) }()
	return ch
}

// probeLoop checks the API server: a broken watch is reported by the
// informers at once, but only a successful request says it is back.
func (a *Agent) probeLoop(ctx context.Context) {
	for {
		a.mu.Lock()
		connected := a.status.Connected
		a.mu.Unlock()
		wait := a.cfg.ProbeInterval
		if !connected {
			wait = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := a.cfg.Client.Discovery().RESTClient().Get().AbsPath("/version").DoRaw(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		a.setConnected(err == nil, err)
	}
}

// syncLoop waits for the informers' first list, then brings the node in
// step after every burst of changes, and retries pods it could not attach.
func (a *Agent) syncLoop(ctx context.Context) {
	if !cache.WaitForCacheSync(ctx.Done(), a.pods.HasSynced, a.nss.HasSynced, a.nps.HasSynced) {
		return
	}
	a.mu.Lock()
	a.status.Synced = true
	a.mu.Unlock()
	a.log.Info("kubernetes informers synced", "node", a.cfg.NodeName)
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		pending := a.sync()
		if pending {
			retry.Reset(time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		case <-retry.C:
		}
		// Gather the rest of the burst.
		select {
		case <-ctx.Done():
			return
		case <-time.After(a.cfg.Debounce):
		}
		select {
		case <-a.kick:
		default:
		}
	}
}

// sync translates the informers' state, puts the policy in force and
// attaches, relabels and detaches this node's pods. It reports whether
// some pod waits for its network (to be retried).
func (a *Agent) sync() (pending bool) {
	start := time.Now()
	cl, local, unenforced := a.universe()
	tr, err := k8s.Translate(cl, a.cfg.Translate)
	policyErr := ""
	if err != nil {
		// The previous policy and pods stay in force: a translation that
		// fails has no partial result, and enforcing less is not an option.
		policyErr = err.Error()
		a.log.Error("translating the NetworkPolicies failed: the previous policy stays in force", "err", err)
	} else {
		text, merr := k8s.MarshalSet(tr.Set)
		if merr != nil || string(text) != a.lastPolicy {
			if err := a.cfg.Enforcer.SetPolicy(tr.Set); err != nil {
				policyErr = err.Error()
				a.log.Error("the translated policy was refused: the previous policy stays in force", "err", err)
			} else if merr == nil {
				a.lastPolicy = string(text)
				a.mu.Lock()
				a.status.PolicyHash = PolicyHash(text)
				a.mu.Unlock()
			}
		}
	}
	enforced := a.cfg.Enforcer.Pods()
	want := map[string]bool{}
	if tr != nil {
		byID := map[string]*k8s.PU{}
		for i := range tr.PUs {
			byID[tr.PUs[i].ID()] = &tr.PUs[i]
		}
		for _, p := range local {
			id := IDPrefix + string(p.UID)
			pu := byID[p.Namespace+"/"+p.Name]
			if pu == nil {
				continue
			}
			tags := pu.Tags.Map()
			if old, ok := enforced[id]; ok {
				want[id] = true
				if !maps.Equal(old, tags) {
					if err := a.cfg.Enforcer.RetagPod(id, tags); err != nil {
						a.log.Error("relabelling pod", "pod", pu.ID(), "err", err)
					} else {
						a.log.Info("pod relabelled", "pod", pu.ID(), "tags", pu.Tags.String())
					}
				}
				continue
			}
			path, err := a.finder.find(pu.IPs)
			if err != nil {
				unenforced[pu.ID()] = err.Error()
				pending = true
				continue
			}
			if err := a.cfg.Enforcer.AttachPod(PodPU{ID: id, Namespace: p.Namespace, Name: p.Name, NetNS: path, Tags: tags}); err != nil {
				unenforced[pu.ID()] = err.Error()
				pending = true
				a.log.Warn("pod not enforced", "pod", pu.ID(), "netns", path, "err", err)
				continue
			}
			want[id] = true
			a.log.Info("pod enforced", "pod", pu.ID(), "netns", path)
		}
	} else {
		// Keep every pod of this node that is still there.
		for _, p := range local {
			want[IDPrefix+string(p.UID)] = true
		}
	}
	for id := range enforced {
		if !want[id] {
			if err := a.cfg.Enforcer.DetachPod(id); err != nil {
				a.log.Warn("detaching pod", "pu", id, "err", err)
			} else {
				a.log.Info("pod gone: no longer enforced, its flows closed", "pu", id)
			}
		}
	}
	a.mu.Lock()
	a.status.LastSync = time.Now()
	a.status.PolicyError = policyErr
	a.status.Unenforced = unenforced
	a.status.Pods = len(want)
	a.status.NetworkPolicies = len(cl.Policies)
	a.mu.Unlock()
	a.log.Debug("kubernetes sync", "pods", len(cl.Pods), "local", len(local), "networkpolicies", len(cl.Policies), "took", time.Since(start))
	return pending
}

// universe builds the translation's input from the informers' caches, and
// returns this node's pods that should be PUs, and the pods of this node
// that cannot be (with why).
func (a *Agent) universe() (*k8s.Cluster, []*corev1.Pod, map[string]string) {
	var nss []*corev1.Namespace
	var pods []*corev1.Pod
	var nps []*networkingv1.NetworkPolicy
	for _, o := range a.nss.GetStore().List() {
		nss = append(nss, o.(*corev1.Namespace))
	}
	for _, o := range a.pods.GetStore().List() {
		pods = append(pods, o.(*corev1.Pod))
	}
	for _, o := range a.nps.GetStore().List() {
		nps = append(nps, o.(*networkingv1.NetworkPolicy))
	}
	return Universe(a.cfg.NodeName, a.log, nss, pods, nps)
}

// Universe is the translation's input for the API objects: every namespace
// and policy, every pod but host-network and ended ones. It also returns
// the pods of node nodeName that should be PUs (they have an address) and
// the pods of that node that cannot be, with why.
func Universe(nodeName string, log *slog.Logger, nss []*corev1.Namespace, pods []*corev1.Pod, nps []*networkingv1.NetworkPolicy) (*k8s.Cluster, []*corev1.Pod, map[string]string) {
	cl := &k8s.Cluster{}
	unenforced := map[string]string{}
	for _, ns := range nss {
		cl.Namespaces = append(cl.Namespaces, k8s.Namespace{Name: ns.Name, Labels: ns.Labels})
	}
	var local []*corev1.Pod
	for _, p := range pods {
		if p.Spec.HostNetwork {
			continue // NetworkPolicy does not apply to host-network pods
		}
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue // ended: its address may be another pod's already
		}
		pod, err := k8s.PodFromObject(p)
		if err != nil {
			if p.Spec.NodeName == nodeName {
				unenforced[p.Namespace+"/"+p.Name] = err.Error()
			}
			log.Warn("pod left out of the translation", "pod", p.Namespace+"/"+p.Name, "err", err)
			continue
		}
		cl.Pods = append(cl.Pods, pod)
		if p.Spec.NodeName == nodeName && len(pod.IPs) > 0 {
			local = append(local, p)
		}
	}
	for _, np := range nps {
		cl.Policies = append(cl.Policies, *np)
	}
	// Informer stores are maps: sort, so that the same state translates
	// to the same text.
	slices.SortFunc(cl.Namespaces, func(x, y k8s.Namespace) int { return compare(x.Name, y.Name) })
	slices.SortFunc(cl.Pods, func(x, y k8s.Pod) int { return compare(x.ID(), y.ID()) })
	slices.SortFunc(cl.Policies, func(x, y networkingv1.NetworkPolicy) int {
		return compare(x.Namespace+"/"+x.Name, y.Namespace+"/"+y.Name)
	})
	return cl, local, unenforced
}

// PolicyHash identifies a printed policy (k8s.MarshalSet): the first 16
// hex digits of its SHA-256.
func PolicyHash(text []byte) string {
	h := sha256.Sum256(text)
	return hex.EncodeToString(h[:8])
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
