// go-flannel: the Go side of `scripts/bench-cni.sh --kube-flannel / --k3s`.
//
// Debian packages no Go flannel CNI plugin (containernetworking-plugins
// 1.1.x dropped it, flannel-io/cni-plugin is not packaged) and this machine
// reaches no Go module proxy, so the benchmark builds this stand-in from
// Debian's libcni sources (GOPATH mode, like tests/libcni-driver). It does
// what flannel's plugin does on the hot path, in the same Go runtime and
// with the same libraries (skel, invoke): read subnet.env, build the
// bridge + host-local delegate config, save it (0600, fsync'd) under
// dataDir/<containerID>, delegate with invoke.DelegateAdd; DEL reads the
// file, delegates DEL and removes it. It is a benchmark reference, not a
// plugin to deploy.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

type netConf struct {
	types.NetConf
	SubnetFile    string                 `json:"subnetFile"`
	DataDir       string                 `json:"dataDir"`
	Delegate      map[string]interface{} `json:"delegate"`
	IPAM          map[string]interface{} `json:"ipam,omitempty"`
	RuntimeConfig map[string]interface{} `json:"runtimeConfig,omitempty"`
}

type subnetEnv struct {
	networks []string
	subnet   *net.IPNet
	mtu      int
	ipmasq   bool
}

func loadConf(stdin []byte) (*netConf, error) {
	n := &netConf{SubnetFile: "/run/flannel/subnet.env", DataDir: "/var/lib/cni/flannel"}
	if err := json.Unmarshal(stdin, n); err != nil {
		return nil, fmt.Errorf("failed to load netconf: %v", err)
	}
	return n, nil
}

func loadSubnetEnv(path string) (*subnetEnv, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	env := &subnetEnv{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(s.Text()), "=")
		if !ok {
			continue
		}
		switch k {
		case "FLANNEL_NETWORK":
			env.networks = strings.Split(v, ",")
		case "FLANNEL_SUBNET":
			_, env.subnet, err = net.ParseCIDR(v)
		case "FLANNEL_MTU":
			env.mtu, err = strconv.Atoi(v)
		case "FLANNEL_IPMASQ":
			env.ipmasq, err = strconv.ParseBool(v)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %v", path, k, err)
		}
	}
	if env.networks == nil || env.subnet == nil || env.mtu == 0 {
		return nil, fmt.Errorf("%s is missing a FLANNEL_ variable", path)
	}
	return env, s.Err()
}

func delegateConf(n *netConf, env *subnetEnv) map[string]interface{} {
	d := n.Delegate
	if d == nil {
		d = map[string]interface{}{}
	}
	d["name"] = n.Name
	d["cniVersion"] = n.CNIVersion
	if _, ok := d["type"]; !ok {
		d["type"] = "bridge"
	}
	if _, ok := d["ipMasq"]; !ok {
		d["ipMasq"] = !env.ipmasq
	}
	if _, ok := d["mtu"]; !ok {
		d["mtu"] = env.mtu
	}
	if _, ok := d["isGateway"]; !ok && d["type"] == "bridge" {
		d["isGateway"] = true
	}
	if n.RuntimeConfig != nil {
		d["runtimeConfig"] = n.RuntimeConfig
	}
	ipam := n.IPAM
	if ipam == nil {
		ipam = map[string]interface{}{}
	}
	if _, ok := ipam["type"]; !ok {
		ipam["type"] = "host-local"
	}
	ipam["ranges"] = [][]map[string]interface{}{{{"subnet": env.subnet.String()}}}
	routes, _ := ipam["routes"].([]interface{})
	for _, nw := range env.networks {
		routes = append(routes, map[string]interface{}{"dst": nw})
	}
	ipam["routes"] = routes
	d["ipam"] = ipam
	return d
}

func saveScratch(dir, id string, conf []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, id), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err = f.Write(conf); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func cmdAdd(args *skel.CmdArgs) error {
	n, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	env, err := loadSubnetEnv(n.SubnetFile)
	if err != nil {
		return err
	}
	d := delegateConf(n, env)
	conf, err := json.Marshal(d)
	if err != nil {
		return err
	}
	if err := saveScratch(n.DataDir, args.ContainerID, conf); err != nil {
		return err
	}
	result, err := invoke.DelegateAdd(context.TODO(), d["type"].(string), conf, nil)
	if err != nil {
		return err
	}
	return types.PrintResult(result, n.CNIVersion)
}

func cmdDel(args *skel.CmdArgs) error {
	n, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	path := filepath.Join(n.DataDir, args.ContainerID)
	conf, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	} else if err != nil {
		return err
	}
	var d types.NetConf
	if json.Unmarshal(conf, &d) != nil {
		return nil
	}
	if err := invoke.DelegateDel(context.TODO(), d.Type, conf, nil); err != nil {
		return err
	}
	return os.Remove(path)
}

func cmdCheck(*skel.CmdArgs) error { return nil }

func main() {
	skel.PluginMain(cmdAdd, cmdCheck, cmdDel, version.All, "go-flannel (benchmark reference)")
}
