//! `palisade-cni`: the CNI plugin binary. The runtime sets `CNI_*` in the
//! environment and writes the network configuration on stdin; the result
//! or a CNI error goes to stdout (see the crate's docs and docs/cni.md).
const HELP: &str = "palisade-cni: Palisade's CNI plugin. A container runtime runs it, with CNI_COMMAND,
CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS and CNI_PATH in the environment and the
network configuration on stdin (CNI 0.3.0 to 1.1.0: ADD, DEL, CHECK, STATUS, GC, VERSION).

Configuration (one plugin of a conflist; example in
/usr/local/share/doc/palisade/examples/cni/10-palisade.conflist):
  \"type\": \"palisade-cni\"
  \"ipam\": {...}         delegated IPAM plugin, e.g. host-local (required)
  \"socket\": PATH        palisade-ctrl's API socket [default: /run/palisade/ctrl.sock]
  \"namespace\": NS       pod namespace without K8S_POD_NAMESPACE [default: default]
  \"dataDir\": DIR        attachment records [default: /var/lib/cni/palisade]
  \"args\": {\"cni\": {\"labels\": [{\"key\": K, \"value\": V}]}}   pod labels
CNI_ARGS: K8S_POD_NAMESPACE, K8S_POD_NAME, PALISADE_LABELS=key:value,key2:value2

See docs/cni.md (installed in /usr/local/share/doc/palisade/cni.md).";

fn main() {
    if std::env::args().nth(1).is_some() {
        println!("{HELP}");
        return;
    }
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let mut stdin = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut stdin);
    let (code, out) = palisade_cni::run(&env, &stdin);
    if !out.is_empty() {
        println!("{out}");
    }
    std::process::exit(code);
}
