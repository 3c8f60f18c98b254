import { avatarColor, initial } from "./util.js";

export interface AvatarProps {
  name: string;
  /** Draw the presence dot: true online, false offline, undefined none (groups). */
  online?: boolean | undefined;
  size?: "small" | "large";
}

/** A coloured initial, with a presence dot. Decorative: the name and the state are written
 *  out beside it. */
export function Avatar({ name, online, size = "large" }: AvatarProps): JSX.Element {
  return (
    <span className={`avatar ${size}`} style={{ background: avatarColor(name) }} aria-hidden="true">
      {initial(name)}
      {online === undefined ? null : <span className={`dot ${online ? "on" : "off"}`} />}
    </span>
  );
}
