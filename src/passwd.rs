//! The /etc/passwd and /etc/group formats: one parser for the host's files (the caller's name
//! for /etc/subuid) and an image's (USER, `--user name`).

/// One `name:password:uid:gid:...` line of /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User<'a> {
    pub name: &'a str,
    /// None when the field is not a number (the line is then only good for its name).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// One `name:password:gid:members` line of /etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group<'a> {
    pub name: &'a str,
    pub gid: Option<u32>,
}

fn fields(line: &str) -> Vec<&str> {
    line.trim_end_matches('\r').split(':').collect()
}

/// The entries of a passwd file; lines with too few fields and comments are skipped.
pub fn users(text: &str) -> impl Iterator<Item = User<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f = fields(l);
            (f.len() >= 4).then(|| User {
                name: f[0],
                uid: f[2].parse().ok(),
                gid: f[3].parse().ok(),
            })
        })
}

/// The entries of a group file.
pub fn groups(text: &str) -> impl Iterator<Item = Group<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f = fields(l);
            (f.len() >= 3).then(|| Group {
                name: f[0],
                gid: f[2].parse().ok(),
            })
        })
}

/// The user named `who`, or whose uid `who` is when it is a number (the first match).
pub fn find_user<'a>(text: &'a str, who: &str) -> Option<User<'a>> {
    let id = who.parse::<u32>().ok();
    users(text).find(|u| u.name == who || (id.is_some() && u.uid == id))
}

/// The group named `who`, or whose gid `who` is when it is a number.
pub fn find_group<'a>(text: &'a str, who: &str) -> Option<Group<'a>> {
    let id = who.parse::<u32>().ok();
    groups(text).find(|g| g.name == who || (id.is_some() && g.gid == id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# a comment\nbroken\n\
                          daemon:x:1:1::/:/sbin/nologin\nweird:x:abc:5::/:\n\
                          app:x:1000:1000:App,,,:/home/app:/bin/sh\r\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:root,app\nstaff:x:50:\nbad\n";

    #[test]
    fn users_by_name_and_by_id() {
        let app = find_user(PASSWD, "app").unwrap();
        assert_eq!((app.uid, app.gid), (Some(1000), Some(1000)));
        assert_eq!(find_user(PASSWD, "1").unwrap().name, "daemon");
        assert_eq!(find_user(PASSWD, "weird").unwrap().uid, None);
        assert!(find_user(PASSWD, "nobody").is_none());
        assert!(find_user(PASSWD, "broken").is_none());
        assert_eq!(users(PASSWD).count(), 4);
    }

    #[test]
    fn groups_by_name_and_by_id() {
        assert_eq!(find_group(GROUP, "wheel").unwrap().gid, Some(10));
        assert_eq!(find_group(GROUP, "50").unwrap().name, "staff");
        assert!(find_group(GROUP, "bad").is_none());
        assert!(find_group(GROUP, "").is_none());
    }
}
