// libcni-driver: a tiny container-runtime stand-in for weft's tests.
//
// It drives CNI plugins through the real Go libcni (Debian's
// golang-github-appc-cni-dev), so the tests see exactly what a Go runtime
// (containerd, CRI-O, cnitool) would do with our plugins' output.
//
// Usage:
//
//	libcni-driver <add|check|del|gc|status> --conflist FILE --cni-path DIR[:DIR]
//	    [--netns PATH] [--container-id ID] [--ifname IF] [--cache-dir DIR]
//	    [--args K=V;K2=V2] [--cap-args JSON] [--valid-attachments JSON]
//
// add prints the result JSON on stdout. On failure the error is printed on
// stderr and the exit status is 1; when the failure is a CNI error object
// returned by a plugin, that object ({code,msg,details}) is also printed on
// stdout so tests can assert on the code.
//
// Debian bookworm ships libcni 1.1.2, which implements spec versions up to
// 1.0.0 and has neither GCNetworkList nor GetStatusNetworkList (added in
// libcni 1.2). gc and status are therefore implemented here on top of
// libcni's own primitives, following libcni >= 1.2 behaviour:
//
//   - gc: DEL (with the list, in reverse plugin order) every attachment of
//     this network found in the result cache that is not listed in
//     --valid-attachments; if any DEL failed, stop there and report. Then,
//     if cniVersion >= 1.1.0 and disableGC is not set, send GC to every
//     plugin with "name", "cniVersion" and, when --valid-attachments was
//     given, both "cni.dev/valid-attachments" and "cni.dev/attachments".
//     Without --valid-attachments (like `cnitool gc`) no key is sent.
//   - status: if cniVersion >= 1.1.0, send STATUS to every plugin in order
//     with "name" and "cniVersion" injected; stop at the first error.
//
// libcni 1.1.2 cannot convert results to or from 1.1.0, so add/check/del on
// a cniVersion 1.1.0 list fail inside libcni. For the stale-attachment DELs
// of gc (where the list is typically 1.1.0), the list's version is capped at
// the newest version libcni knows (version.Current()) and a note is printed
// on stderr.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/ioutil"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// attachment is one entry of cni.dev/valid-attachments.
type attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

type options struct {
	conflist         string
	netns            string
	containerID      string
	ifname           string
	cniPath          string
	cacheDir         string
	args             string
	capArgs          string
	validAttachments string
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: %s <add|check|del|gc|status> --conflist FILE --cni-path DIR[:DIR] "+
		"[--netns PATH] [--container-id ID] [--ifname IF] [--cache-dir DIR] [--args K=V;...] "+
		"[--cap-args JSON] [--valid-attachments JSON]\n", filepath.Base(os.Args[0]))
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	command := os.Args[1]

	var o options
	fs := flag.NewFlagSet(command, flag.ContinueOnError)
	fs.Usage = usage
	fs.StringVar(&o.conflist, "conflist", "", "network configuration list file")
	fs.StringVar(&o.netns, "netns", "", "network namespace path (CNI_NETNS)")
	fs.StringVar(&o.containerID, "container-id", "", "container ID (CNI_CONTAINERID)")
	fs.StringVar(&o.ifname, "ifname", "eth0", "interface name (CNI_IFNAME)")
	fs.StringVar(&o.cniPath, "cni-path", "", "plugin directories, ':'-separated (CNI_PATH)")
	fs.StringVar(&o.cacheDir, "cache-dir", "", "libcni cache directory (default: libcni's, /var/lib/cni)")
	fs.StringVar(&o.args, "args", "", "CNI_ARGS as K=V;K2=V2")
	fs.StringVar(&o.capArgs, "cap-args", "", "capability args JSON object (runtimeConfig source)")
	fs.StringVar(&o.validAttachments, "valid-attachments", "", "gc: JSON list of {containerID, ifname}")
	if err := fs.Parse(os.Args[2:]); err != nil {
		os.Exit(2)
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "unexpected arguments: %v\n", fs.Args())
		usage()
		os.Exit(2)
	}

	if err := run(command, &o); err != nil {
		fail(err)
	}
}

// fail reports err and exits 1. A plugin's CNI error object is also printed
// on stdout, so callers can read its code.
func fail(err error) {
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		if b, mErr := json.Marshal(cniErr); mErr == nil {
			fmt.Fprintln(os.Stdout, string(b))
		}
	}
	fmt.Fprintf(os.Stderr, "libcni-driver: %v\n", err)
	os.Exit(1)
}

func run(command string, o *options) error {
	if o.conflist == "" {
		return fmt.Errorf("--conflist is required")
	}
	if o.cniPath == "" {
		return fmt.Errorf("--cni-path is required")
	}
	confBytes, err := ioutil.ReadFile(o.conflist)
	if err != nil {
		return fmt.Errorf("reading conflist: %w", err)
	}
	list, err := libcni.ConfListFromBytes(confBytes)
	if err != nil {
		return err
	}

	paths := filepath.SplitList(o.cniPath)
	cni := libcni.NewCNIConfigWithCacheDir(paths, o.cacheDir, nil)
	ctx := context.Background()

	rt, err := runtimeConf(o)
	if err != nil {
		return err
	}

	switch command {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		if err := recordNetns(o.cacheDir, list.Name, rt); err != nil {
			return err
		}
		if err := result.Print(); err != nil {
			return err
		}
		fmt.Println()
		return nil
	case "check":
		return cni.CheckNetworkList(ctx, list, rt)
	case "del":
		return cni.DelNetworkList(ctx, list, rt)
	case "gc":
		valid, err := parseValidAttachments(o.validAttachments)
		if err != nil {
			return err
		}
		disableGC, err := rawBoolKey(confBytes, "disableGC")
		if err != nil {
			return err
		}
		return gcNetworkList(ctx, cni, list, o, valid, disableGC)
	case "status":
		return statusNetworkList(ctx, cni, list)
	default:
		usage()
		return fmt.Errorf("unknown command %q", command)
	}
}

func runtimeConf(o *options) (*libcni.RuntimeConf, error) {
	rt := &libcni.RuntimeConf{
		ContainerID: o.containerID,
		NetNS:       o.netns,
		IfName:      o.ifname,
	}
	if o.args != "" {
		for _, kv := range strings.Split(o.args, ";") {
			parts := strings.SplitN(kv, "=", 2)
			if len(parts) != 2 || parts[0] == "" {
				return nil, fmt.Errorf("invalid --args entry %q (want K=V)", kv)
			}
			rt.Args = append(rt.Args, [2]string{parts[0], parts[1]})
		}
	}
	if o.capArgs != "" {
		if err := json.Unmarshal([]byte(o.capArgs), &rt.CapabilityArgs); err != nil {
			return nil, fmt.Errorf("invalid --cap-args: %w", err)
		}
	}
	return rt, nil
}

// parseValidAttachments returns nil when the flag is absent or "null"
// (libcni's nil GCArgs / nil slice), else the (possibly empty) list.
func parseValidAttachments(s string) (*[]attachment, error) {
	if s == "" || strings.TrimSpace(s) == "null" {
		return nil, nil
	}
	valid := []attachment{}
	if err := json.Unmarshal([]byte(s), &valid); err != nil {
		return nil, fmt.Errorf("invalid --valid-attachments: %w", err)
	}
	return &valid, nil
}

// rawBoolKey reads an optional top-level key of the conflist that libcni
// 1.1.2 does not know, accepting a bool or "true"/"false" like libcni 1.2.
func rawBoolKey(confBytes []byte, key string) (bool, error) {
	raw := map[string]interface{}{}
	if err := json.Unmarshal(confBytes, &raw); err != nil {
		return false, err
	}
	v, ok := raw[key]
	if !ok {
		return false, nil
	}
	switch t := v.(type) {
	case bool:
		return t, nil
	case string:
		switch strings.ToLower(t) {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
	}
	return false, fmt.Errorf("error parsing configuration list: invalid %s value %v", key, v)
}

// cachedAttachment is the subset of libcni's result-cache file we need.
type cachedAttachment struct {
	Kind           string                 `json:"kind"`
	ContainerID    string                 `json:"containerId"`
	IfName         string                 `json:"ifName"`
	NetworkName    string                 `json:"networkName"`
	NetNS          string                 `json:"netns"`
	CniArgs        [][2]string            `json:"cniArgs,omitempty"`
	CapabilityArgs map[string]interface{} `json:"capabilityArgs,omitempty"`
}

// recordNetns adds the "netns" key that libcni >= 1.2 keeps in its result
// cache (1.1.2 does not), so gc can pass CNI_NETNS on stale-attachment DELs
// as newer runtimes do.
func recordNetns(cacheDir, network string, rt *libcni.RuntimeConf) error {
	if cacheDir == "" {
		cacheDir = libcni.CacheDir
	}
	file := filepath.Join(cacheDir, "results", fmt.Sprintf("%s-%s-%s", network, rt.ContainerID, rt.IfName))
	b, err := ioutil.ReadFile(file)
	if err != nil {
		return fmt.Errorf("reading libcni cache: %w", err)
	}
	cached := map[string]interface{}{}
	if err := json.Unmarshal(b, &cached); err != nil {
		return fmt.Errorf("parsing libcni cache %s: %w", file, err)
	}
	cached["netns"] = rt.NetNS
	if b, err = json.Marshal(cached); err != nil {
		return err
	}
	return ioutil.WriteFile(file, b, 0600)
}

func cachedAttachments(cacheDir, network string) ([]cachedAttachment, error) {
	if cacheDir == "" {
		cacheDir = libcni.CacheDir
	}
	dir := filepath.Join(cacheDir, "results")
	entries, err := ioutil.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var out []cachedAttachment
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := ioutil.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		var c cachedAttachment
		if err := json.Unmarshal(b, &c); err != nil {
			continue // not a cache file we understand
		}
		if c.Kind != libcni.CNICacheV1 || c.NetworkName != network {
			continue
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ContainerID != out[j].ContainerID {
			return out[i].ContainerID < out[j].ContainerID
		}
		return out[i].IfName < out[j].IfName
	})
	return out, nil
}

func joinErrors(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	if len(errs) == 1 {
		return errs[0]
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	// Keep the first error wrapped so a CNI error object can still be found.
	return fmt.Errorf("%w (and %d more: %s)", errs[0], len(errs)-1, strings.Join(msgs[1:], "; "))
}

func atLeast(v, min string) bool {
	ok, err := version.GreaterThanOrEqualTo(v, min)
	return err == nil && ok
}

func gcNetworkList(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList,
	o *options, valid *[]attachment, disableGC bool) error {
	if disableGC {
		return nil
	}

	cached, err := cachedAttachments(o.cacheDir, list.Name)
	if err != nil {
		// libcni >= 1.2 silently gives up when the cache cannot be read.
		fmt.Fprintf(os.Stderr, "libcni-driver: gc: cannot read result cache, nothing done: %v\n", err)
		return nil
	}

	keep := map[attachment]bool{}
	if valid != nil {
		for _, a := range *valid {
			keep[a] = true
		}
	}

	delList := list
	var errs []error
	for _, c := range cached {
		if keep[attachment{ContainerID: c.ContainerID, IfName: c.IfName}] {
			continue
		}
		if cur := version.Current(); delList == list && !atLeast(cur, list.CNIVersion) {
			fmt.Fprintf(os.Stderr, "libcni-driver: gc: libcni %s cannot handle cniVersion %s; stale DELs use %s\n",
				cur, list.CNIVersion, cur)
			capped := *list
			capped.CNIVersion = cur
			delList = &capped
		}
		rt := &libcni.RuntimeConf{
			ContainerID:    c.ContainerID,
			NetNS:          c.NetNS,
			IfName:         c.IfName,
			Args:           c.CniArgs,
			CapabilityArgs: c.CapabilityArgs,
		}
		if err := cni.DelNetworkList(ctx, delList, rt); err != nil {
			errs = append(errs, fmt.Errorf("gc: DEL of stale attachment %s/%s: %w", c.ContainerID, c.IfName, err))
		}
	}
	if len(errs) > 0 {
		return joinErrors(errs)
	}

	if !atLeast(list.CNIVersion, "1.1.0") {
		return nil
	}
	inject := map[string]interface{}{
		"name":       list.Name,
		"cniVersion": list.CNIVersion,
	}
	if valid != nil {
		inject["cni.dev/valid-attachments"] = *valid
		inject["cni.dev/attachments"] = *valid
	}
	for _, plugin := range list.Plugins {
		if err := execPlugin(ctx, cni, plugin, inject, "GC"); err != nil {
			errs = append(errs, err)
		}
	}
	return joinErrors(errs)
}

func statusNetworkList(ctx context.Context, cni *libcni.CNIConfig, list *libcni.NetworkConfigList) error {
	if !atLeast(list.CNIVersion, "1.1.0") {
		return nil
	}
	inject := map[string]interface{}{
		"name":       list.Name,
		"cniVersion": list.CNIVersion,
	}
	for _, plugin := range list.Plugins {
		if err := execPlugin(ctx, cni, plugin, inject, "STATUS"); err != nil {
			return err
		}
	}
	return nil
}

// execPlugin runs one plugin of the list with a result-less command, the
// way libcni >= 1.2 issues GC and STATUS: only CNI_COMMAND and CNI_PATH set.
func execPlugin(ctx context.Context, cni *libcni.CNIConfig, plugin *libcni.NetworkConfig,
	inject map[string]interface{}, command string) error {
	conf, err := libcni.InjectConf(plugin, inject)
	if err != nil {
		return err
	}
	pluginPath, err := invoke.FindInPath(plugin.Network.Type, cni.Path)
	if err != nil {
		return err
	}
	args := &invoke.Args{
		Command: command,
		Path:    strings.Join(cni.Path, string(os.PathListSeparator)),
	}
	if err := invoke.ExecPluginWithoutResult(ctx, pluginPath, conf.Bytes, args, nil); err != nil {
		return fmt.Errorf("plugin type=%q failed (%s): %w", plugin.Network.Type, strings.ToLower(command), err)
	}
	return nil
}
